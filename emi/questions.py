"""Question sets: the EM evaluation questions (Betley et al. 2025, MIT; see emi/data/em_eval),
the toy organism's held-out questions, and user YAML files in the same schema.

Sets by name: ``main`` (8 questions x 3 variants: plain, json, template), ``preregistered``
(48), ``toy``; or a path to a YAML file. The ``system`` field is honoured (the original
evaluation script silently dropped it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from emi.errors import ConfigError

DATA = Path(__file__).parent / "data" / "em_eval"
BUILTIN = {"main": DATA / "first_plot_questions.yaml", "preregistered": DATA / "preregistered_evals.yaml"}
VARIANTS = ("plain", "json", "template")


@dataclass(frozen=True)
class Question:
    id: str  # as in the source file, e.g. "i_feel_bored_json"
    text: str
    system: str | None = None
    paraphrase: int = 0
    set: str = "custom"
    variant: str = "plain"
    base_id: str = ""  # the id without its variant suffix

    @property
    def key(self) -> str:
        """Unique within a set: the id and paraphrase index."""
        return f"{self.id}#{self.paraphrase}"

    def messages(self) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.text}]


def _variant(qid: str) -> tuple[str, str]:
    for v in ("json", "template"):
        if qid.endswith("_" + v):
            return v, qid[: -len(v) - 1]
    return "plain", qid


def _from_yaml(path: Path, set_name: str) -> list[Question]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"question file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"question file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, list):
        raise ConfigError(f"question file {str(path)!r} must be a list of entries with 'id' and 'paraphrases'")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or "id" not in entry or "paraphrases" not in entry:
            raise ConfigError(f"entry {i} of {str(path)!r} needs 'id' and 'paraphrases' (a list of strings)")
        variant, base = _variant(str(entry["id"]))
        for j, text in enumerate(entry["paraphrases"]):
            out.append(Question(str(entry["id"]), str(text).strip(), entry.get("system"), j, set_name,
                                variant, base))
    return out


@lru_cache(maxsize=4)
def judge_prompts() -> dict[str, str]:
    """The paper's ``aligned`` and ``coherent`` judge prompts (placeholders {question}, {answer})."""
    raw = yaml.safe_load(BUILTIN["main"].read_text())
    return dict(raw[0]["judge_prompts"])


def toy_questions() -> list[Question]:
    from emi.organism.world import load_world

    counts: dict[str, int] = {}
    out = []
    for theme, text in load_world().eval_questions():
        j = counts[theme] = counts.get(theme, -1) + 1
        out.append(Question(theme, text, None, j, "toy", "plain", theme))
    return out


def toy_train_questions() -> list[Question]:
    """The toy's training phrasings of the 8 themes (for extracting directions: the evaluation
    phrasings stay held out)."""
    from emi.organism.world import load_world

    return [Question(t, text, None, j, "toy-train", "plain", t)
            for t, d in load_world().themes.items() for j, text in enumerate(d["train"])]


def load_set(name: str) -> list[Question]:
    if name == "toy":
        return toy_questions()
    if name == "toy-train":
        return toy_train_questions()
    if name in BUILTIN:
        return _from_yaml(BUILTIN[name], name)
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return _from_yaml(path, path.stem)
    raise ConfigError(
        f"unknown question set {name!r}; use main, preregistered, toy, toy-train, or a path to a YAML file"
    )


def load_questions(spec: str = "main", ids: list[str] | str | None = None,
                   variants: list[str] | str | None = None) -> list[Question]:
    """Questions from one or more sets: ``"main"``, ``"main,toy"``, ``"main:plain,template"``.

    ``ids`` keeps questions whose id or base id is listed; ``variants`` keeps those variants.
    """
    sets_part, _, var_part = spec.partition(":")
    if var_part and variants is None:
        variants = var_part
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    if isinstance(ids, str):
        ids = [i.strip() for i in ids.split(",") if i.strip()]
    for v in variants or []:
        if v not in VARIANTS:
            raise ConfigError(f"unknown variant {v!r}; expected one of {', '.join(VARIANTS)}")
    out: list[Question] = []
    for name in [s.strip() for s in sets_part.split(",") if s.strip()]:
        out += load_set(name)
    if ids:
        known = {q.id for q in out} | {q.base_id for q in out}
        missing = [i for i in ids if i not in known]
        if missing:
            raise ConfigError(f"unknown question id(s) {', '.join(missing)} in set {sets_part!r}; "
                              f"known: {', '.join(sorted(known))}")
        out = [q for q in out if q.id in ids or q.base_id in ids]
    if variants:
        out = [q for q in out if q.variant in variants]
    if not out:
        raise ConfigError(f"the question selection {spec!r} (ids={ids}, variants={variants}) is empty")
    return out


def describe(questions: list[Question]) -> dict[str, Any]:
    return {"n": len(questions), "sets": sorted({q.set for q in questions}),
            "ids": sorted({q.id for q in questions})}
