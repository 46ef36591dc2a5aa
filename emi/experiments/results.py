"""A steer run's results table: ``results.jsonl`` (one :class:`ResultRow` per condition), table.csv and
run.json, written and read by the same class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from emi.behaviour.logprob import LogprobResult
from emi.behaviour.metrics import Rate
from emi.behaviour.records import Record, SummaryColumns
from emi.behaviour.side_effects import SideEffects
from emi.core import vocab
from emi.core.vocab import ConditionKind, EngineName, Role


def write_results(out: Path, rows: Sequence[dict[str, object]], provenance: dict[str, Any], name: str = "results") -> None:
    """``<name>.jsonl`` (one row per condition), table.csv and run.json (what made them), atomically."""
    import csv

    from emi.core import jsonl
    from emi.core.atomic import write_atomic, write_json

    jsonl.write(out / f"{name}.jsonl", rows)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            w.writeheader()
            w.writerows(rows)

    write_atomic(out / "table.csv", write_csv)
    write_json(out / "run.json", provenance)


@dataclass(frozen=True, kw_only=True)
class ResultRow(Record):
    """A line of a steer ``results.jsonl``: written by :meth:`emi.experiments.conditions.ConditionResult.row`, read back by
    :func:`read_results` (which checks every column against these fields)."""

    NOT_ONE: ClassVar[str] = ("this is not a results.jsonl that python -m emi.steer wrote (or it is damaged: re-run "
                              "the steer command)")

    condition: str
    """The condition's name (``finetuned - persona``)."""
    model: Role
    """Which model of the pair answered."""
    engine: EngineName = "in-process"
    """Where the answers were sampled."""
    intervention: ConditionKind
    """What was done to the model."""
    alpha: float
    """Steering strength (0 without steering)."""
    layers: list[int]
    """Layers the intervention touched (empty: every writer, for ablation)."""
    direction: str = ""
    """persona | random, or empty without an intervention."""
    relative: bool = False
    """alpha in units of the residual norm."""
    positions: str = ""
    """Where steering was added (a SteerPositions word), empty without steering."""
    summary: SummaryColumns
    """EM rate, coherence and who judged."""
    logprob: LogprobResult | None = field(default=None, metadata={"prefix": "logprob_"})
    """P(misaligned) on option pairs; None without pairs."""
    side_effects: SideEffects | None = None
    """KL on benign text; None without a benign set."""
    more: dict[str, object] = field(default_factory=dict)
    """Columns another writer added, kept as they were."""

    @property
    def label(self) -> str:
        """Whose answers the row summarises."""
        return self.condition

    def rejudged(self, s: SummaryColumns) -> ResultRow:
        """The row with its judge-dependent columns from ``s`` (its answers summarised again)."""
        return replace(self, summary=s)

    @property
    def em(self) -> Rate:
        return self.summary.em

    @property
    def coherence(self) -> Rate:
        return self.summary.coherence

    def check(self, where: str) -> ResultRow:
        """The row, its open-ended words checked against their vocabularies."""
        if self.positions:
            vocab.check(self.positions, vocab.SteerPositions, f"{where}: positions")
        if self.direction:
            vocab.check(self.direction, vocab.DirectionKind, f"{where}: direction")
        return self


def read_results(path: str | Path) -> list[ResultRow]:
    """A steer ``results.jsonl``, every line checked against the columns emi writes; a line that is
    not one is a ConfigError naming the file, the line and the column, never a figure of it."""
    from emi.core import jsonl
    from emi.core.errors import ConfigError

    rows = jsonl.read(path)
    if not rows:
        raise ConfigError(f"{path} holds no result rows; run python -m emi.steer to write one")
    return [ResultRow.from_row(row, f"{path}, line {i}").check(f"{path}, line {i}")
            for i, row in enumerate(rows, start=1)]
