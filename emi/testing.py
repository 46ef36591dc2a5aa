"""Builders for tests, benchmarks and notebooks: random Qwen2 models at real shapes, offline."""

from __future__ import annotations

from typing import Any

import torch


def qwen2_5_0_5b_config(**overrides: object):  # -> Qwen2Config
    """The Qwen2.5-0.5B-Instruct shape: hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864,
    vocabulary 151,936, tied embeddings."""
    from transformers import Qwen2Config

    cfg: dict[str, Any] = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
               max_position_embeddings=32768, rope_theta=1000000.0)
    cfg.update(overrides)
    return Qwen2Config(**cfg)


def random_qwen2(config, dtype: torch.dtype = torch.float32, seed: int = 0):  # noqa: ANN001
    """A Qwen2ForCausalLM with random weights, initialised in bf16 (twice as fast) then cast."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype)
