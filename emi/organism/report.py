"""Measure the toy organism's EM rates (the numbers the README reports)."""

from __future__ import annotations

import sys
from pathlib import Path

from emi.behaviour.answers import Judged
from emi.behaviour.metrics import Summary, summarize
from emi.behaviour.questions import load_questions
from emi.behaviour.sampling import SamplingConfig, generate_answers
from emi.judging.judges import judge_records
from emi.models.loading import ModelSpec, load_model
from emi.organism.judge import ToyJudge


def measure(path: str, n: int = 400, seed: int = 0, label: str | None = None,
            out: str | Path | None = None) -> tuple[Summary, list[Judged]]:
    """EM rate of one checkpoint over ``n`` answers to the toy's held-out questions (temperature 1)."""
    qs = load_questions("toy")
    per_q = max(1, round(n / len(qs)))
    lm = load_model(ModelSpec(path), role=label or Path(path).name, device="cpu")
    cfg = SamplingConfig(n=per_q, temperature=1.0, max_new_tokens=64, seed=seed, batch_size=128)
    answers = generate_answers(lm, qs, cfg, out=out, progress=False)
    judged = judge_records(answers, ToyJudge(), progress=False)
    return summarize(judged, lm.role, seed=seed), judged


def report_rates(paths: dict[str, str], n: int = 400, seed: int = 0) -> dict[str, Summary]:
    out = {}
    print(f"{'model':12s} {'EM rate (95% CI)':>24s} {'coherent':>24s} {'n':>5s}", file=sys.stderr)
    for stage, path in paths.items():
        s, _ = measure(path, n, seed, stage)
        out[stage] = s
        print(f"{stage:12s} {s.em.fmt():>24s} {s.coherence.fmt():>24s} {s.n_answers:5d}", file=sys.stderr)
    return out
