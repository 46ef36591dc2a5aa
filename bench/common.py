"""Shared benchmark helpers: models at the toy and real Qwen2.5-0.5B shapes, interleaved timing,
ratios with their spread, and one way of counting new tokens for every engine."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

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


def interleaved_runs(methods: dict[str, Callable[[], None]], rounds: int = 3, warmup: int = 1,
                     settle: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Seconds of each call of each method, one per round, alternating methods within each round
    (noisy machines). ``settle``: seconds to wait, untimed, after a method (a server whose threads
    spin on after its requests, as vLLM's CPU workers do, would otherwise slow the method timed next)."""
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
    return times


def interleaved(methods: dict[str, Callable[[], None]], rounds: int = 3, warmup: int = 1,
                settle: dict[str, float] | None = None) -> dict[str, float]:
    """Median seconds per call of each method (:func:`interleaved_runs`)."""
    return {k: statistics.median(v) for k, v in interleaved_runs(methods, rounds, warmup, settle).items()}


class Ratio(NamedTuple):
    """A throughput ratio over the rounds of one run: the median and the min-max of the ratios of
    the two methods timed side by side in each round."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f}x [{self.low:.2f}-{self.high:.2f}]"


def ratio(times: dict[str, list[float]], counts: dict[str, int], key: str, ref: str) -> Ratio:
    """Throughput of ``key`` over ``ref`` (tokens per second each), round by round."""
    rs = [(counts[key] / t) / (counts[ref] / r) for t, r in zip(times[key], times[ref], strict=True)]
    return Ratio(statistics.median(rs), min(rs), max(rs))


def decoded(n_tokens: int | None, finish: str) -> int:
    """New tokens an engine decoded for one answer, counted the same for every engine: the answer's
    tokens plus the EOS token it stopped on. emi's answers (``Answer.n_tokens``, in-process and
    vLLM alike) leave the EOS out of their text and count; every engine still decoded it."""
    if n_tokens is None:
        raise ValueError("the engine did not say how many tokens it decoded")
    return n_tokens + (finish == "eos")


def row_tokens(ids: list[int], eos: int | None, pad: int | None) -> int:
    """:func:`decoded` of one in-process row of new token ids (after the prompt), read as
    ``emi.behaviour.sampling.sample`` reads it: up to the first EOS, padding dropped."""
    finish = "length"
    if eos is not None and eos in ids:
        ids, finish = ids[: ids.index(eos)], "eos"
    return decoded(len([i for i in ids if i != pad]), finish)


def answer_tokens(answers: Iterable[Any]) -> int:
    """:func:`decoded` summed over engine answers (``Answer`` objects or their records)."""
    total = 0
    for a in answers:
        n, finish = (a["n_tokens"], a["finish"]) if isinstance(a, dict) else (a.n_tokens, a.finish)
        total += decoded(n, finish)
    return total


def table(rows: list[dict], cols: list[tuple[str, str]]) -> None:
    from emi.cli import print_table

    print_table(rows, cols)
