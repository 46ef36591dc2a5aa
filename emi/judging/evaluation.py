"""Generate, judge and summarise: how misaligned is a model (steered or not)?"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emi.behaviour.answers import Judged
from emi.behaviour.metrics import Summary, Thresholds, summarize
from emi.behaviour.questions import Question
from emi.behaviour.sampling import Engine, SamplingConfig, generate_answers
from emi.core import locks
from emi.judging.judges import Judge, judge_records
from emi.models.loading import LoadedModel


def evaluate(model: LoadedModel, questions: Sequence[Question], cfg: SamplingConfig, judge: Judge,
             out_dir: str | Path | None = None, label: str | None = None, progress: bool = True,
             thresholds: Thresholds = Thresholds(), extra: Mapping[str, Any] | None = None,
             identity: Mapping[str, Any] | None = None, engine: Engine | None = None,
             denominator: str = "coherent") -> tuple[Summary, list[Judged]]:
    """Answers (appended to ``out_dir/answers.jsonl``), judgements (cached in
    ``out_dir/judgements.jsonl``) and the summary. Re-running resumes both. ``identity`` keys the
    answers (default: the model's own; see :func:`emi.behaviour.sampling.generate_answers`);
    ``engine`` samples them (default: in-process); ``denominator``: the headline EM rate's
    (coherent or scored; the summary holds both)."""
    label = label or model.role
    out = Path(out_dir) if out_dir else None
    with locks.exclusive(out) if out else contextlib.nullcontext():
        answers = generate_answers(model, questions, cfg, out=out / "answers.jsonl" if out else None,
                                   label=label, progress=progress, extra=extra, identity=identity, engine=engine)
        judged = judge_records(answers, judge, cache=out / "judgements.jsonl" if out else None, progress=progress)
    return summarize(judged, label, thresholds, denominator=denominator, seed=cfg.seed), judged
