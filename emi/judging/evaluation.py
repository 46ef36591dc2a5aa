"""Generate, judge and summarise: how misaligned is a model (steered or not)? And the table
``python -m emi.evaluate`` writes of it: a :class:`EvaluateRow` per model and elicitation (the
``models`` of its summary.json)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from emi.behaviour.answers import Judged
from emi.behaviour.logprob import LogprobResult
from emi.behaviour.metrics import Summary, Thresholds, summarize
from emi.behaviour.questions import Question
from emi.behaviour.records import Record, SummaryColumns, absent_when_none
from emi.behaviour.sampling import Engine, SamplingConfig, generate_answers
from emi.core import locks
from emi.core.vocab import EngineName
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


@dataclass(frozen=True, kw_only=True)
class EvaluateRow(Record):
    """A model's row of an evaluate run (summary.json's ``models``): its summary, where it was sampled,
    how it was asked, and its log-prob P(misaligned)."""

    NOT_ONE: ClassVar[str] = ("this is not a summary.json that python -m emi.evaluate wrote (or it is damaged: "
                              "re-run the evaluate command)")

    model: str
    """The role (base, finetuned, control): the label of its answers."""
    summary: SummaryColumns
    """EM rate, coherence, counts and who judged."""
    engine: EngineName | None = absent_when_none()
    """Where the answers were sampled (absent in older files)."""
    elicitation: str | None = absent_when_none()
    """How the questions were asked: the elicitation's label (absent in older files)."""
    elicitation_record: dict[str, object] | None = absent_when_none()
    """The elicitation's settings, as its answers keep them."""
    logprob: LogprobResult | None = field(default=None, metadata={"prefix": "logprob_"})
    """P(misaligned) on option pairs; None without pairs."""
    more: dict[str, object] = field(default_factory=dict)
    """Columns another writer added, kept as they were."""

    @property
    def label(self) -> str:
        """Whose answers the row summarises."""
        return self.model

    def rejudged(self, s: SummaryColumns) -> EvaluateRow:
        """The row with its judge-dependent columns from ``s`` (its answers summarised again)."""
        return replace(self, summary=s)
