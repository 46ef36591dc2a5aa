"""The defence table as typed records: ``defences.jsonl`` (one :class:`DefenceRow` per organism and
elicitation, written by ``python -m emi.defences``, read by :func:`read_defences`). The file keeps
the columns emi.defences has always written, in the same order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from emi.behaviour.metrics import Rate
from emi.behaviour.records import Estimate, Record, absent_when_none
from emi.experiments.measures import Judging, Measures


@dataclass(frozen=True, kw_only=True)
class DefenceRow(Record):
    """A line of ``defences.jsonl``: a model (the base, a pair's finetune or an organism), asked one way."""

    NOT_ONE: ClassVar[str] = ("this is not a defences.jsonl that python -m emi.defences wrote (or it is damaged: "
                              "re-run the defences command)")

    label: str
    """The model: ``base``, ``<pair> finetune``, or the organism's folder."""
    defence: str
    """The organism's defence (``(base)`` for the base; ``<defence> [eval: <prompt>]``: asked with its prompt)."""
    seed: int | None = None
    """The organism's seed; None for the base and a pair's finetune."""
    eval_prompt: str | None = absent_when_none()
    """The system prompt the row was asked with (the one the organism was trained with); absent otherwise."""
    checkpoint: str
    """The label of the row's answers (the same as ``label``)."""
    measures: Measures
    """EM rate, coherence, P(misaligned) and the shift along the direction."""
    task: Rate | None = None
    """The pair kit's task rate; None: the kit has no task."""
    judging: Judging
    """The denominator, both EM rates and who judged."""
    kl: Estimate
    """KL(base || model) of the next token on the kit's benign set, nats per token (0 for the base)."""
    n_benign: int
    """Benign conversations the KL is over."""
    evaluated: str = "default"
    """How the questions were asked (the elicitation's label)."""
    shift_trajectory: list[list[float]] | None = absent_when_none()
    """[step, mean shift along the direction] at step 0 and every saved checkpoint; organisms only."""
    more: dict[str, object] = field(default_factory=dict)
    """Columns another writer added, kept as they were."""

    @property
    def organism(self) -> bool:
        """Whether the row is an organism's (it has a seed)."""
        return self.seed is not None


def read_defences(path: str | Path) -> list[DefenceRow]:
    """A ``defences.jsonl``, every line checked against the columns emi writes; a line that is not one
    is a ConfigError naming the file, the line and the column."""
    from emi.core import jsonl
    from emi.core.errors import ConfigError

    rows = jsonl.read(path)
    if not rows:
        raise ConfigError(f"{path} holds no defence rows; run python -m emi.defences to write them")
    return [DefenceRow.from_row(row, f"{path}, line {i}") for i, row in enumerate(rows, start=1)]
