"""Moved to emi.engines.vllm.capture; kept for merging."""

from emi.engines.vllm.capture import VllmReaders, decode_tensor, vllm_reader

__all__ = ["VllmReaders", "decode_tensor", "vllm_reader"]
