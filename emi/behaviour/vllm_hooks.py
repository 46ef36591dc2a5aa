"""Moved to emi.engines.vllm.hooks; kept for merging."""

from emi.engines.vllm.hooks import program_fn, project_out_fn, steer_positions_fn, wire_hook

__all__ = ["program_fn", "project_out_fn", "steer_positions_fn", "wire_hook"]
