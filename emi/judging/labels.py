"""Human labels of answers, validated into typed records before any comparison.

A labels file is JSONL (one object a line) or CSV (a header row). Each label names one answer
of a run, by ``model``, ``key`` and ``sample`` (as in the run's answers.jsonl) or by its
``question`` and ``answer`` text, and gives ``aligned`` and/or ``coherent`` on the judges'
0-100 scale (empty or null: not labelled). Every problem is one sentence naming the file, the
line and the fix.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emi.behaviour.answers import AnswerRecord, Scores
from emi.core.errors import ConfigError


@dataclass(frozen=True)
class Label:
    line: int
    aligned: float | None
    coherent: float | None
    model: str | None = None
    key: str | None = None
    sample: int | None = None
    question: str | None = None
    answer: str | None = None

    def ident(self) -> tuple[Any, ...]:
        if self.model is not None:
            return ("id", self.model, self.key, self.sample)
        return ("text", norm(self.question or ""), norm(self.answer or ""))

    def as_judged(self) -> Scores:
        """The label as a judged record (status ``scored`` when both scores are given)."""
        both = self.aligned is not None and self.coherent is not None
        return {"aligned": self.aligned, "coherent": self.coherent, "status": "scored" if both else "unscored",
                "judge": "human labels"}


def norm(text: str) -> str:
    return " ".join(text.split())


def answer_idents(r: AnswerRecord) -> list[tuple[Any, ...]]:
    """The ways a label can name answer record ``r``."""
    return [("id", r.get("model"), r.get("key"), r.get("sample")),
            ("text", norm(r.get("question", "")), norm(r.get("answer", "")))]


def _score(raw: Any, field: str, where: str) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {field} must be a number 0-100 or empty, found {raw!r}") from None
    if not math.isfinite(v) or not 0 <= v <= 100:
        raise ConfigError(f"{where}: {field} must be within 0-100, found {raw!r}")
    return v


def _label(raw: Any, where: str, line: int) -> Label:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a label is an object with aligned/coherent and model+key+sample or "
                          f"question+answer, found {type(raw).__name__}")
    unknown = set(raw) - {"aligned", "coherent", "model", "key", "sample", "question", "answer", "note"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; a label has aligned, coherent, model, key, "
                          f"sample, question, answer (and an optional note)")
    aligned, coherent = _score(raw.get("aligned"), "aligned", where), _score(raw.get("coherent"), "coherent", where)
    if aligned is None and coherent is None:
        raise ConfigError(f"{where}: the label gives neither aligned nor coherent; give at least one (0-100)")
    by_id = all(raw.get(k) not in (None, "") for k in ("model", "key", "sample"))
    by_text = all(isinstance(raw.get(k), str) and raw.get(k) for k in ("question", "answer"))
    if not (by_id or by_text):
        raise ConfigError(f"{where}: the label names no answer; give model, key and sample (as in answers.jsonl) or "
                          f"question and answer")
    sample = None
    if by_id:
        try:
            sample = int(raw["sample"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: sample must be an integer, found {raw['sample']!r}") from None
    return Label(line, aligned, coherent, str(raw["model"]) if by_id else None, str(raw["key"]) if by_id else None,
                 sample, raw.get("question"), raw.get("answer"))


def load_labels(path: str | Path) -> list[Label]:
    """Validated labels from a .jsonl or .csv file; two labels of one answer are refused."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"labels file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"labels file {str(p)!r} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    rows: list[tuple[int, Any]] = []
    if p.suffix.lower() == ".csv":
        rows = [(i + 2, r) for i, r in enumerate(csv.DictReader(text.splitlines()))]
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}, line {i}: not a JSON object ({exc.msg}); a labels file is JSONL, "
                                      f"one label a line, or a .csv") from None
    if not rows:
        raise ConfigError(f"labels file {str(p)!r} holds no labels")
    out: list[Label] = []
    seen: dict[tuple[Any, ...], int] = {}
    for i, raw in rows:
        lab = _label(raw, f"{p}, line {i}", i)
        if lab.ident() in seen:
            raise ConfigError(f"{p}, line {i}: labels the same answer as line {seen[lab.ident()]}; keep one")
        seen[lab.ident()] = i
        out.append(lab)
    return out


def match(labels: list[Label], records: Sequence[AnswerRecord]) -> tuple[list[int], list[Scores], int]:
    """(indices into ``records``, the labels as judged records in that order, unmatched count)."""
    index: dict[tuple[Any, ...], int] = {}
    for i, r in enumerate(records):
        for ident in answer_idents(r):
            index.setdefault(ident, i)
    idx: list[int] = []
    judged: list[Scores] = []
    missing = 0
    for lab in labels:
        found = index.get(lab.ident())
        if found is None:
            missing += 1
            continue
        idx.append(found)
        judged.append(lab.as_judged())
    return idx, judged, missing
