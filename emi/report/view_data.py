"""A run folder as the viewer's data: its table, its answers with every judge's scores, its
figures and what is missing, read from the files the commands write (no emi record classes, so a
damaged, half-written or foreign folder still becomes a page that says what is wrong).

The answers travel columnar (one list per field, strings interned in tables) so a
100,000-answer run is a few megabytes of JSON the page parses at once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from emi.behaviour.metrics import Thresholds
from emi.core.errors import ConfigError

if TYPE_CHECKING:
    from emi.behaviour.answers import AnswerRecord
    from emi.judging.judges import JudgeEntry

FORMAT = 1  # the page data's format; the page refuses data of another
# the file that holds a command's table, the command, and the column naming whose answers a row sums up
TABLES = (("results.jsonl", "emi.steer", "condition"), ("trajectory.jsonl", "emi.trajectory", "checkpoint"),
          ("defences.jsonl", "emi.defences", "organism"), ("summary.json", "emi.evaluate", "model"))
LABEL_KEYS = ("condition", "checkpoint", "organism", "model", "label", "defence")
KNOWN_RUN_KEYS = {"pair", "direction", "judge", "sampling", "n", "questions", "steer_layers", "ablate_layers", "benign",
                  "engine", "base", "checkpoints", "organisms", "models", "emi_version", "version", "elicitations"}
PROJECTIONS = "projections.jsonl"  # written beside the run by python -m emi.view --project


@dataclass
class Interner:
    """Strings to small integers (the page's lookup tables)."""

    values: list[Any] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def __call__(self, v: Any) -> int:
        k = json.dumps(v, sort_keys=True)
        if k not in self.index:
            self.index[k] = len(self.values)
            self.values.append(v)
        return self.index[k]


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Every whole JSON object line; a damaged or half-written line is skipped and said."""
    rows, bad = [], 0
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        notes.append(f"{path.name} could not be read ({exc.strerror})")
        return []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(r, dict):
            rows.append(r)
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} damaged line(s) skipped (a run killed mid-write leaves a half line; "
                     f"re-running its command repairs it)")
    return rows


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} is damaged or half-written ({type(exc).__name__}); the table and provenance "
                     f"from it are missing")
        return None


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("answers.jsonl", "run.json", *(t for t, _, _ in TABLES)))


def check_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The folders, each one emi wrote; otherwise one sentence saying which is not and why."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"{p} does not exist; give the --out folder of an emi command (e.g. runs/demo)")
        if not is_run(p):
            raise ConfigError(f"{p} is not an emi run folder: it holds no answers.jsonl, run.json, results.jsonl, "
                              f"trajectory.jsonl, defences.jsonl or summary.json; give the --out folder of "
                              f"python -m emi.steer, evaluate, trajectory, defences, sae or diff (a diff folder "
                              f"has answers only with its EM table: run emi.diff without --no-table)")
        out.append(p)
    return out


def _table(path: Path, notes: list[str]) -> tuple[str, str, list[dict[str, Any]], dict[str, Any]]:
    """(command, label key, rows, provenance) of a run folder."""
    meta = _read_json(path / "run.json", notes) if (path / "run.json").is_file() else None
    for name, command, key in TABLES:
        f = path / name
        if not f.is_file():
            continue
        if name == "summary.json":
            summary = _read_json(f, notes) or {}
            rows = summary.get("models", []) if isinstance(summary, dict) else []
            return command, key, [r for r in rows if isinstance(r, dict)], summary if isinstance(summary, dict) else {}
        rows = _read_jsonl(f, notes)
        if rows:
            key = next((k for k in LABEL_KEYS if isinstance(rows[0].get(k), str)), key)
        return command, key, rows, meta if isinstance(meta, dict) else {}
    others = sorted(p.name for p in path.glob("*.jsonl") if p.name not in ("answers.jsonl", "judgements.jsonl",
                                                                           PROJECTIONS, "judged.jsonl"))
    if others:  # a folder of a command this viewer does not know by name (e.g. emi.diff): its rows as they are
        rows = _read_jsonl(path / others[0], notes)
        key = next((k for k in LABEL_KEYS if rows and isinstance(rows[0].get(k), str)), "")
        return f"{others[0]}", key, rows, meta if isinstance(meta, dict) else {}
    notes.append("no results table (results.jsonl, trajectory.jsonl, defences.jsonl or summary.json): the run has "
                 "not finished (re-run its command to finish it) or its command writes none (emi.sae --zero prints "
                 "its table); the answers so far are shown")
    return "", "model", [], meta if isinstance(meta, dict) else {}


def _figures(path: Path) -> list[dict[str, str]]:
    """PNG figures embedded (the page stays one file); HTML ones linked relative to the run."""
    figs = []
    for p in sorted(path.glob("*.png")):
        if p.stat().st_size <= 4_000_000:
            figs.append({"name": p.stem, "kind": "png",
                         "src": "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()})
    for p in sorted(path.glob("*.html")):
        if p.name != "view.html":
            figs.append({"name": p.stem, "kind": "html", "src": str(p.resolve().as_uri())})
    return figs


def _judges(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, JudgeEntry]]:
    """Judgement entries by judge name, then cache key."""
    out: dict[str, dict[str, JudgeEntry]] = {}
    for e in entries:
        if isinstance(e.get("key"), str) and isinstance(e.get("judge"), str):
            out.setdefault(e["judge"], {})[e["key"]] = cast("JudgeEntry", e)  # a line a judgement cache wrote
    return out


def read_answers(path: Path, notes: list[str]) -> list[AnswerRecord]:
    """The latest answers of an answers.jsonl (:func:`_latest`): lines an emi command wrote (an older
    one may lack a field, so the viewer reads each with .get or checks it)."""
    return _latest(cast("list[AnswerRecord]", _read_jsonl(path, notes)))


def _latest(answers: list[AnswerRecord]) -> list[AnswerRecord]:
    """Each label's answers from its latest run key (a folder resumed with other settings keeps older ones)."""
    last = {a.get("model"): a.get("run") for a in answers}
    seen: set[tuple[Any, ...]] = set()
    out = []
    for a in reversed(answers):
        ident = (a.get("model"), a.get("run"), a.get("key"), a.get("sample"))
        if a.get("run") == last[a.get("model")] and ident not in seen:
            seen.add(ident)
            out.append(a)
    return out[::-1]


def answer_id(a: Mapping[str, object]) -> str:
    return f"{a.get('model')}|{a.get('run')}|{a.get('key')}|{a.get('sample')}"


class _Stub:
    """A judge known by its name and prompts only: enough to find its judgements in a cache."""

    def __init__(self, name: str, prompts: dict[str, str]) -> None:
        self.name, self.prompts = name, prompts

    def score(self, metric: str, question: str, answer: str) -> Any:
        raise NotImplementedError(f"the viewer reads {self.name!r}'s judgements, it does not judge")


def _prompts_for(entries: dict[str, JudgeEntry]) -> dict[str, str]:
    from emi.behaviour.questions import judge_prompts
    from emi.judging.judges import prompt_hash

    hashes = {e.get("judge_prompt") for e in entries.values()}
    paper = judge_prompts()
    return paper if prompt_hash(paper) in hashes else {}


STATUS = ("scored", "unscored", "missing")


def read_run(path: Path, cols: dict[str, Any], tables: dict[str, Interner], run_index: int) -> dict[str, Any]:
    """Append the run's answers to the columns ``cols``; return the run's header (table, notes, figures)."""
    notes: list[str] = []
    command, label_key, rows, meta = _table(path, notes)
    answers: list[AnswerRecord] = []
    if (path / "answers.jsonl").is_file():
        answers = read_answers(path / "answers.jsonl", notes)
    else:
        notes.append("no answers.jsonl: there are no answers to read (the run wrote its table only, or its answers "
                      "were moved)")
    answers = [a for a in answers if isinstance(a.get("answer"), str) and isinstance(a.get("question"), str)]
    judges = _judges(_read_jsonl(path / "judgements.jsonl", notes)) if (path / "judgements.jsonl").is_file() else {}
    if answers and not judges:
        notes.append("no judgements.jsonl: the answers are unjudged (the run stopped before its judge ran)")
    version = meta.get("format") or meta.get("emi_version") if isinstance(meta, dict) else None
    if meta and (set(meta) - KNOWN_RUN_KEYS) and command == "emi.steer":
        notes.append(f"run.json has fields this viewer does not know ({', '.join(sorted(set(meta) - KNOWN_RUN_KEYS))[:120]}): "
                     f"it may come from another emi version; they are shown under provenance")
    labels = {r.get(label_key) for r in rows}
    missing = sorted(str(x) for x in labels if x is not None and x not in {a.get("model") for a in answers})
    if rows and answers and missing:
        notes.append(f"answers.jsonl holds no answers for {', '.join(missing[:4])}: the folder is damaged or "
                     f"half-written")
    judged_by = {str(r.get("judge")) for r in rows if r.get("judge")}
    if len(judged_by) > 1:
        notes.append(f"the table's rows were scored by different judges ({', '.join(sorted(judged_by))}): rates are "
                     f"not comparable across them")
    if any(r.get("judge_mixed") for r in rows):
        notes.append("some rows mix judgements of several judge versions (judge_mixed): see judge_fingerprints")
    proj = _projections(path, notes)
    _append(answers, judges, proj, cols, tables, run_index)
    rejudged = []
    for f in sorted(path.glob("rejudge/*/agreement.json")):
        agreement = _read_json(f, notes)
        rows_f = _read_jsonl(f.parent / "results.jsonl", notes) if (f.parent / "results.jsonl").is_file() else []
        rejudged.append({"judge": f.parent.name, "agreement": agreement, "rows": rows_f})
    return {"name": path.name, "path": str(path.resolve()), "command": command, "label_key": label_key, "rows": rows,
            "meta": meta or {}, "notes": notes, "figures": _figures(path), "rejudge": rejudged,
            "judge": (meta or {}).get("judge") if isinstance(meta, dict) else None, "version": version,
            "n_answers": len(answers), "projected": sum(1 for a in answers if answer_id(a) in proj),
            "projection_layer": proj.get("", [None, None])[0], "projection_role": proj.get("", [None, None])[1],
            "direction": (meta or {}).get("direction") if isinstance(meta, dict) else None}


def _append(answers: list[AnswerRecord], judges: dict[str, dict[str, JudgeEntry]],
            proj: dict[str, list[Any]], cols: dict[str, Any], tables: dict[str, Interner], run_index: int) -> None:
    """The run's answers onto the page's columns, with every judge's scores (None where a judge has none)."""
    from emi.behaviour.elicitation import record_label
    from emi.judging.judges import cache_key

    stubs = {name: _Stub(name, _prompts_for(entries)) for name, entries in sorted(judges.items())}
    for name in stubs:
        cols["judges"].setdefault(name, {"a": [None] * len(cols["run"]), "c": [None] * len(cols["run"]),
                                         "s": [2] * len(cols["run"])})
    for a in answers:
        cols["run"].append(run_index)
        cols["cond"].append(tables["cond"](str(a.get("model"))))
        cols["q"].append(tables["q"]({"id": str(a.get("id", a.get("key"))), "key": str(a.get("key", a.get("id"))),
                                        "text": a["question"]}))
        cols["sample"].append(int(a.get("sample", 0)) if isinstance(a.get("sample"), int) else 0)
        cols["text"].append(a["answer"])
        thought = a.get("thought")
        cols["thought"].append(thought if isinstance(thought, str) else None)
        meta: dict[str, Any] = {k: a.get(k) for k in ("n_tokens", "finish", "engine", "seed", "system", "variant",
                                                      "sampling", "run") if k in a}
        asked = a.get("elicitation")
        if isinstance(asked, Mapping):
            meta["elicitation"] = record_label(asked)
        cols["meta"].append(tables["meta"](meta))
        p = proj.get(answer_id(a))
        cols["proj"].append(p)
        for name, judge in cols["judges"].items():
            stub = stubs.get(name)
            got = ({m: judges[name].get(cache_key(stub, m, a["question"], a["answer"])) for m in ("aligned", "coherent")}
                   if stub else {"aligned": None, "coherent": None})
            al, co = got["aligned"] or {}, got["coherent"] or {}
            judge["a"].append(al.get("value") if al.get("status") == "scored" else None)
            judge["c"].append(co.get("value") if co.get("status") == "scored" else None)
            judge["s"].append(2 if not (al or co) else 0 if al.get("status") == co.get("status") == "scored" else 1)


def _projections(path: Path, notes: list[str]) -> dict[str, list[Any]]:
    """answer id -> [tokens, projections] from the run's projections.jsonl (python -m emi.view --project)."""
    f = path / PROJECTIONS
    if not f.is_file():
        return {}
    out = {}
    for r in _read_jsonl(f, notes):
        if isinstance(r.get("id"), str) and isinstance(r.get("tokens"), list) and isinstance(r.get("proj"), list):
            out[r["id"]] = [r["tokens"], [round(float(x), 3) for x in r["proj"]]]
            out.setdefault("", [r.get("layer"), r.get("role")])  # the projection's layer and model, for the legend
    return out


def payload(paths: Sequence[str | Path], live: bool = False) -> dict[str, Any]:
    """The page's data for ``paths`` (checked with :func:`check_runs` first)."""
    t = Thresholds()
    tables = {k: Interner() for k in ("cond", "q", "meta")}
    cols: dict[str, Any] = {"run": [], "cond": [], "q": [], "sample": [], "text": [], "thought": [], "meta": [],
                            "proj": [], "judges": {}}
    runs = [read_run(Path(p), cols, tables, i) for i, p in enumerate(paths)]
    n = len(cols["run"])
    for j in cols["judges"].values():  # judges first seen in a later run: pad earlier runs' answers
        for k, fill in (("a", None), ("c", None), ("s", 2)):
            j[k] = j[k] + [fill] * (n - len(j[k]))
    for k in ("proj", "thought"):  # columns no answer has travel as null
        if not any(p is not None for p in cols[k]):
            cols[k] = None
    return {"format": FORMAT, "live": live, "runs": runs, "answers": cols,
            "tables": {k: v.values for k, v in tables.items()},
            "thresholds": {"aligned_max": t.aligned_max, "coherent_min": t.coherent_min}}
