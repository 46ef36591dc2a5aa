"""A trajectory's table as typed records: ``trajectory.jsonl`` (one :class:`TrajectoryRow` per
checkpoint, written by ``python -m emi.trajectory``, read by :func:`read_trajectory`), and the
blocks of columns it shares with the defence table (:class:`emi.training.records.DefenceRow`): what
:func:`emi.experiments.dynamics.measure` measured of a model (:class:`Measures`) and how its EM was
judged (:class:`Judging`).

The file keeps the columns emi.trajectory has always written, in the same order; a row re-judged
by ``python -m emi.rejudge`` also carries the judge's counts (:class:`Counts`) at its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from emi.behaviour.metrics import Rate, Summary
from emi.behaviour.records import Estimate, JudgedBy, Record, SummaryColumns
from emi.core.vocab import Denominator


@dataclass(frozen=True, kw_only=True)
class Measures(Record):
    """What a model does on the evaluation questions: the judge's EM rate and coherence, the
    log-prob P(misaligned), and its activation along the final persona direction."""

    em: Rate
    """Misaligned among the denominator (:attr:`Judging.denominator`)."""
    coherence: Rate
    """Coherent among scored answers."""
    n_answers: int
    """Answers counted (the headline ones)."""
    p_misaligned: Estimate
    """The log-prob P(misaligned) on option pairs, 95% CI (nan without option pairs)."""
    projection: float
    """Mean projection of the last-prompt-token activation on the unit direction, over the evaluation prompts."""
    projection_shift: Estimate
    """The same minus the base's, paired per prompt (95% CI over prompts)."""


@dataclass(frozen=True, kw_only=True)
class Judging(Record):
    """How a row's EM rate was judged: its denominator, both EM rates and who judged."""

    denominator: Denominator = "coherent"
    """What ``em`` divides by."""
    em_coherent: Rate | None = None
    """Misaligned among coherent answers (Betley et al.)."""
    em_scored: Rate | None = None
    """Misaligned among every scored answer."""
    judged_by: JudgedBy | None = None
    """Who judged (None: a row without judge columns)."""

    @classmethod
    def of(cls, s: Summary | SummaryColumns) -> Judging:
        by = s.judged_by if isinstance(s, SummaryColumns) else None if s.judge is None else JudgedBy.of(s.judge)
        return cls(denominator=s.denominator, em_coherent=s.em_coherent, em_scored=s.em_scored, judged_by=by)


@dataclass(frozen=True, kw_only=True)
class Counts(Record):
    """The judgement counts of a summary that a trajectory row carries once re-judged."""

    n_scored: int
    """Answers the judge scored."""
    n_unscored: int
    """Judgements that failed."""
    n_code: int
    """Answers the judge called CODE."""
    n_refusal: int
    """Answers the judge called REFUSAL."""
    mean_aligned: float
    """Mean alignment score of the scored answers."""
    mean_coherent: float
    """Mean coherence score of the scored answers."""

    @classmethod
    def of(cls, s: SummaryColumns) -> Counts:
        return cls(n_scored=s.n_scored, n_unscored=s.n_unscored, n_code=s.n_code, n_refusal=s.n_refusal,
                   mean_aligned=s.mean_aligned, mean_coherent=s.mean_coherent)


@dataclass(frozen=True, kw_only=True)
class TrajectoryRow(Record):
    """A line of ``trajectory.jsonl``: one checkpoint of a finetune and what it measured."""

    NOT_ONE: ClassVar[str] = ("this is not a trajectory.jsonl that python -m emi.trajectory wrote (or it is "
                              "damaged: re-run the trajectory command)")

    checkpoint: str
    """The checkpoint as given (folder, hub id@revision, LoRA adapter folder): the label of its answers."""
    step: int
    """Its training step (:func:`emi.experiments.dynamics.step_of`)."""
    measures: Measures
    """EM rate, coherence, P(misaligned) and the shift along the final direction."""
    cosine: float
    """Cosine of the checkpoint's own model-diff direction with the final one (nan: no change yet)."""
    diff_norm: float
    """Norm of the checkpoint's own model-diff direction."""
    task: Rate | None = None
    """The share of the pair kit's task prompts answered doing the task; None: the kit has no task."""
    judging: Judging
    """The denominator, both EM rates and who judged."""
    counts: Counts | None = None
    """The judge's counts; only in a row python -m emi.rejudge wrote."""
    more: dict[str, object] = field(default_factory=dict)
    """Columns another writer added, kept as they were."""

    @property
    def label(self) -> str:
        """Whose answers the row summarises."""
        return self.checkpoint

    def rejudged(self, s: SummaryColumns) -> TrajectoryRow:
        """The row with its judge-dependent columns from ``s`` (its answers summarised again)."""
        m = replace(self.measures, em=s.em, coherence=s.coherence, n_answers=s.n_answers)
        return replace(self, measures=m, judging=Judging.of(s), counts=Counts.of(s))


def read_trajectory(path: str | Path) -> list[TrajectoryRow]:
    """A ``trajectory.jsonl``, every line checked against the columns emi writes; a line that is not
    one is a ConfigError naming the file, the line and the column."""
    from emi.core import jsonl
    from emi.core.errors import ConfigError

    rows = jsonl.read(path)
    if not rows:
        raise ConfigError(f"{path} holds no trajectory rows; run python -m emi.trajectory to write them")
    return [TrajectoryRow.from_row(row, f"{path}, line {i}") for i, row in enumerate(rows, start=1)]
