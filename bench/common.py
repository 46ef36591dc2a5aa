"""Shared benchmark helpers: models at the toy and real Qwen2.5-0.5B shapes, interleaved timing."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.standins: random models at real shapes


def qwen05_random(dtype: torch.dtype = torch.float32):
    """Random weights at the Qwen2.5-0.5B-Instruct shape (as issue #5 measured), with the toy tokenizer."""
    from emi.models.loading import LoadedModel, ModelSpec, load_tokenizer
    from emi.organism.kit import checkpoint as toy_checkpoint
    from tests.standins import qwen2_5_0_5b_config, random_qwen2

    model = random_qwen2(qwen2_5_0_5b_config(), dtype)
    tok = load_tokenizer(toy_checkpoint("base"))
    return LoadedModel("qwen05-random", model, tok, ModelSpec("random-qwen2.5-0.5b-shape"))


def toy():
    from emi.models.loading import ModelSpec, load_model
    from emi.organism.kit import checkpoint as toy_checkpoint

    return load_model(ModelSpec(toy_checkpoint("insecure")), role="toy", device="cpu")


def random_batch(batch: int, seq: int, vocab: int = 1400, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (batch, seq), generator=g)


def interleaved(methods: dict[str, Callable[[], None]], rounds: int = 3, warmup: int = 1,
                settle: dict[str, float] | None = None) -> dict[str, float]:
    """Median seconds per call of each method, alternating methods within each round (noisy machines).
    ``settle``: seconds to wait, untimed, after a method (a server whose threads spin on after its
    requests, as vLLM's CPU workers do, would otherwise slow the method timed next)."""
    settle = settle or {}
    for _ in range(warmup):
        for k, f in methods.items():
            f()
            time.sleep(settle.get(k, 0.0))
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(rounds):
        for k, f in methods.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
            time.sleep(settle.get(k, 0.0))
    return {k: statistics.median(v) for k, v in times.items()}


def table(rows: list[dict], cols: list[tuple[str, str]]) -> None:
    from emi.cli import print_table

    print_table(rows, cols)
