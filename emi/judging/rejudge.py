"""Score a finished run's stored answers with another judge, without sampling again.

A run folder of ``emi.evaluate`` (summary.json), ``emi.steer`` (results.jsonl: one row per
condition, a sweep's too) or ``emi.trajectory`` (trajectory.jsonl) holds answers.jsonl and the
judge cache judgements.jsonl. :func:`rejudge` judges the answers of each of the run's rows (the
latest answers of each label: a folder resumed with other settings keeps older answers too) with
a new judge into the same judgements.jsonl (keys name the judge, so the two judges' judgements
sit side by side, and a re-run resumes), summarises each row again and measures agreement:
with the run's own judge, with human labels, and with the pair's exact judge where the pair
has one (a closed world's: ground truth).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from emi.behaviour.answers import AnswerRecord, Judged, Scored
from emi.behaviour.metrics import summarize
from emi.behaviour.questions import judge_prompts
from emi.behaviour.records import SummaryColumns
from emi.core import jsonl
from emi.core.errors import ConfigError, JudgeError
from emi.core.vocab import JudgeStatus
from emi.experiments.measures import TrajectoryRow, read_trajectory
from emi.experiments.results import ResultRow, read_results
from emi.judging.agreement import Agreement, agreement
from emi.judging.evaluation import EvaluateRow
from emi.judging.judges import (
    Judge,
    JudgeCache,
    JudgeEntry,
    cache_key,
    is_exact,
    judge_records,
    make_judge,
)
from emi.judging.labels import Label, match

KINDS = {"summary.json": ("evaluate", "model"), "trajectory.jsonl": ("trajectory", "checkpoint"),
         "results.jsonl": ("steer", "condition")}
TableRow = ResultRow | TrajectoryRow | EvaluateRow
"""A row of a table a rejudge reads: each has its ``label`` (whose answers) and is ``rejudged``."""


@dataclass(frozen=True)
class RunFolder:
    path: Path
    kind: str  # evaluate | steer | trajectory
    label_key: str  # the row column naming whose answers a row summarises
    pair: str | None
    judge: str | None  # the judge the run was scored by
    rows: Sequence[TableRow]  # the run's table, read by its record class
    answers: list[AnswerRecord]  # the rows' answers, in file order

    @property
    def seed(self) -> int:
        return int(self.answers[0].get("seed", 0)) if self.answers else 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} could not be read ({exc}); re-run the command that wrote it") from None


def read_table(path: Path, kind: str, meta: Any) -> Sequence[TableRow]:
    """The run's table (``meta``: its parsed summary.json, for an evaluate run), every row checked."""
    if kind == "steer":
        return read_results(path)
    if kind == "trajectory":
        return read_trajectory(path)
    models = meta.get("models") if isinstance(meta, dict) else None
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{path} holds no models rows; re-run python -m emi.evaluate")
    return [EvaluateRow.from_row(r, f"{path}, models[{i}]") for i, r in enumerate(models)]


def read_run(path: str | Path) -> RunFolder:
    """A finished run folder, validated: its rows and the answers they summarise."""
    p = Path(path)
    if not (p / "answers.jsonl").is_file():
        raise ConfigError(f"{p} holds no answers.jsonl: give the --out folder of python -m emi.evaluate, emi.steer "
                          f"or emi.trajectory")
    found = next((f for f in KINDS if (p / f).is_file()), None)
    if found is None:
        raise ConfigError(f"{p} has answers but no summary.json, results.jsonl or trajectory.jsonl: the run did "
                          f"not finish; re-run its command to finish it, then rejudge")
    kind, label_key = KINDS[found]
    meta = _read_json(p / ("summary.json" if kind == "evaluate" else "run.json"))
    rows = read_table(p / found, kind, meta)
    pair = meta.get("pair")
    pair = pair.get("pair") if isinstance(pair, dict) else pair
    answers = cast(list[AnswerRecord], jsonl.read(p / "answers.jsonl"))
    return RunFolder(p, kind, label_key, pair, meta.get("judge"), rows, latest_answers(answers, [r.label for r in rows]))


def latest_answers(answers: Sequence[AnswerRecord], labels: Sequence[str]) -> list[AnswerRecord]:
    """Each label's answers from its latest run key (the one its last answer line carries)."""
    last = {a.get("model"): a.get("run") for a in answers}
    out = [a for a in answers if a.get("model") in labels and a.get("run") == last[a.get("model")]]
    missing = [x for x in labels if x not in last]
    if missing:
        raise ConfigError(f"answers.jsonl holds no answers for {missing[:3]}; the folder is damaged or mixed: re-run "
                          f"the command that wrote it")
    return out


class _Named:
    """A judge known by its name only: reads the judgements it left in a cache."""

    def __init__(self, name: str, prompts: dict[str, str]) -> None:
        self.name, self.prompts = name, prompts

    def score(self, metric: str, question: str, answer: str) -> Any:
        raise JudgeError(f"the judge {self.name!r} is not available here")


def stored_judgements(run: RunFolder, name: str) -> list[Scored] | None:
    """The run's answers as judged by the judge called ``name`` (from judgements.jsonl; answers
    it left unjudged are ``unscored``); None when the cache holds none of its judgements."""
    store = JudgeCache(run.path / "judgements.jsonl")
    for prompts in (judge_prompts(), {}):  # the paper's prompts, or a judge without prompts
        stub = _Named(name, prompts)
        got = [{m: store.get(cache_key(stub, m, r["question"], r["answer"])) for m in ("aligned", "coherent")}
               for r in run.answers]
        if any(g["aligned"] or g["coherent"] for g in got):
            return [_as_judged(r, g, name) for r, g in zip(run.answers, got, strict=True)]
    return None


def _as_judged(r: AnswerRecord, got: dict[str, JudgeEntry | None], name: str) -> Scored:
    a, c = got["aligned"] or JudgeEntry(), got["coherent"] or JudgeEntry()
    status = cast(JudgeStatus, a.get("status", "unscored") if a.get("status", "unscored") != "scored"
                  else c.get("status", "unscored"))
    return {**r, "aligned": a.get("value"), "coherent": c.get("value"), "status": status, "judge": name}


@dataclass
class Rejudged:
    run: RunFolder
    judge: str
    denominator: str
    judged: list[Judged]
    rows: list[TableRow]  # the run's rows, their judge-dependent columns from the new judge
    agreements: list[Agreement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def exact_reference(run: RunFolder) -> Judge | None:
    """The pair's exact judge (ground truth) when the run's pair has one."""
    if not run.pair:
        return None
    from emi.models.registry import all_pairs

    spec = all_pairs().get(run.pair)
    if spec is None or not is_exact(spec.kit.judge):
        return None
    return make_judge(spec.kit.judge)


def rejudge(run: RunFolder, judge: Judge, denominator: str = "coherent", labels: Sequence[Label] | None = None,
            progress: bool = True) -> Rejudged:
    """Judge the run's answers with ``judge`` (cached in its judgements.jsonl), summarise each row
    again, and measure agreement with the run's judge, ``labels`` and the pair's exact judge."""
    judged = judge_records(run.answers, judge, cache=run.path / "judgements.jsonl", progress=progress)
    by_label: dict[str, list[Judged]] = {}
    for r in judged:
        by_label.setdefault(r["model"], []).append(r)
    rows: list[TableRow] = []
    for row in run.rows:  # the run's row (any table), its judge-dependent columns judged again
        s = summarize(by_label.get(row.label, []), row.label, denominator=denominator, seed=run.seed)
        rows.append(row.rejudged(SummaryColumns.of(s)))
    out = Rejudged(run, judge.name, denominator, judged, rows)
    _compare(out, judge, labels, progress)
    return out


def _compare(out: Rejudged, judge: Judge, labels: Sequence[Label] | None, progress: bool) -> None:
    run, seed, denom = out.run, out.run.seed, out.denominator
    original = stored_judgements(run, run.judge) if run.judge and run.judge != judge.name else None
    reference = exact_reference(run)
    if reference is not None and reference.name != judge.name:
        exact = judge_records(run.answers, reference, progress=progress)
        name = f"{reference.name} (exact)"
        out.agreements.append(agreement(exact, out.judged, name, judge.name, denom, seed=seed))
        if original is not None and run.judge != reference.name:
            out.agreements.append(agreement(exact, original, name, str(run.judge), denom, seed=seed))
    if original is not None:
        if reference is None or run.judge != reference.name:  # (else: reported above, as the exact judge)
            out.agreements.append(agreement(original, out.judged, str(run.judge), judge.name, denom, seed=seed))
    elif run.judge and run.judge != judge.name:
        out.notes.append(f"judgements.jsonl holds none by the run's own judge {run.judge!r}, so there is no "
                         f"agreement with it")
    if labels:
        idx, human, missing = match(list(labels), run.answers)
        if missing:
            out.notes.append(f"{missing} of {len(labels)} labels name no answer of this run (matched by model, key "
                             f"and sample, or by question and answer text); they are left out")
        mine = [out.judged[i] for i in idx]
        out.agreements.append(agreement(human, mine, "human labels", judge.name, denom, seed=seed))


def slug(name: str) -> str:
    """A folder name for a judge name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "judge"
