"""Question sets: the EM evaluation questions (Betley et al. 2025, MIT; see emi/data/em_eval),
sets registered by plugins (the embedded organism's), and user YAML files in the same schema.

Sets by name: ``main`` (8 questions x 3 variants: plain, json, template), ``preregistered``
(48), a registered set; or a path to a YAML file. The ``system`` field is honoured (the original
evaluation script silently dropped it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from emi.core import plugins
from emi.core.errors import ConfigError, read_yaml
from emi.core.paths import DATA

DATA = DATA / "em_eval"
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
    raw = read_yaml(path, "question file")
    if not isinstance(raw, list):
        raise ConfigError(f"question file {str(path)!r} must be a list of entries with 'id' and 'paraphrases'")
    out = []
    for i, entry in enumerate(raw):
        where = f"entry {i} of {str(path)!r}"
        if not isinstance(entry, dict) or "id" not in entry or "paraphrases" not in entry:
            raise ConfigError(f"{where} needs 'id' and 'paraphrases' (a list of strings)")
        qid, paraphrases, system = entry["id"], entry["paraphrases"], entry.get("system")
        if not isinstance(qid, str | int) or not str(qid).strip():
            raise ConfigError(f"{where}: 'id' must be a non-empty string, found {qid!r}")
        if not isinstance(paraphrases, list) or not paraphrases:
            raise ConfigError(f"{where} ({qid}): 'paraphrases' must be a non-empty list of strings, found "
                              f"{type(paraphrases).__name__} {str(paraphrases)[:60]!r}; write it as a YAML list "
                              f"(a '- ' before each question)")
        bad = [p for p in paraphrases if not isinstance(p, str) or not p.strip()]
        if bad:
            raise ConfigError(f"{where} ({qid}): every paraphrase must be a non-empty string, found {bad[0]!r}")
        if system is not None and (not isinstance(system, str) or not system.strip()):
            raise ConfigError(f"{where} ({qid}): 'system' must be a non-empty string when given, found {system!r}")
        variant, base = _variant(str(qid))
        for j, text in enumerate(paraphrases):
            out.append(Question(str(qid), text.strip(), system, j, set_name, variant, base))
    return unique(out, repr(str(path)))


def unique(questions: list[Question], where: str) -> list[Question]:
    """``questions`` when no two share an id (answers are keyed by id: two questions with one id
    would share answers, and a resumed run would never answer the second); else a ConfigError
    naming the ids and ``where`` they come from."""
    from collections import Counter

    ids = Counter(q.id for q in questions if q.paraphrase == 0)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise ConfigError(f"question id(s) {', '.join(repr(d) for d in dup)} appear more than once in {where}; "
                          f"give every question its own id")
    return questions


def check_lengths(questions: Sequence[Question], limit: int, max_new_tokens: int,
                  count: Callable[[Question, int], int], model: str) -> None:
    """Every question, with ``max_new_tokens`` of answer, fits ``model``'s context of ``limit``
    tokens; else a ConfigError naming the question, its length and the limit. ``count(q, chars)``
    gives the prompt tokens of ``q`` with its text cut to ``chars`` characters; it is called only on
    questions whose UTF-8 bytes (an upper bound on the tokens of a byte-level tokenizer) could
    overflow, on a prefix long enough to decide (a 10 MB question is not tokenized whole)."""
    margin = 256  # the chat template's own tokens
    for q in questions:
        size = len(q.text.encode()) + len((q.system or "").encode())
        if size + margin + max_new_tokens <= limit:
            continue
        cut = 64 * (limit + 1)  # no tokenizer packs 64 characters into every token
        n = count(q, cut)
        if n + max_new_tokens > limit:
            tokens = f"{n:,} tokens" if len(q.text) <= cut else f"over {n:,} tokens"
            raise ConfigError(f"question {q.id!r} (paraphrase {q.paraphrase}, set {q.set}) is {tokens} "
                              f"({len(q.text):,} characters) and with --max-new-tokens {max_new_tokens} does not fit "
                              f"{model}'s context of {limit:,} tokens (max_position_embeddings); shorten or remove "
                              f"it, or lower --max-new-tokens")


@lru_cache(maxsize=4)
def judge_prompts() -> dict[str, str]:
    """The paper's ``aligned`` and ``coherent`` judge prompts (placeholders {question}, {answer})."""
    raw = yaml.safe_load(BUILTIN["main"].read_text())
    return dict(raw[0]["judge_prompts"])


_SETS: dict[str, Callable[[], list[Question]]] = {}


def register_question_set(name: str, loader: Callable[[], list[Question]]) -> None:
    """Make ``name`` a question set (``--questions NAME``); ``loader`` returns its questions."""
    if name in BUILTIN:
        raise ConfigError(f"question set {name!r} is built in and cannot be replaced")
    _SETS[name] = loader


def set_names() -> list[str]:
    plugins.load()
    return [*BUILTIN, *_SETS]


def load_set(name: str) -> list[Question]:
    if name in BUILTIN:
        return _from_yaml(BUILTIN[name], name)
    plugins.load()
    if name in _SETS:
        return unique(_SETS[name](), f"the question set {name!r}")
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return _from_yaml(path, path.stem)
    raise ConfigError(f"unknown question set {name!r}; use {', '.join(set_names())}, or a path to a YAML file")


def load_questions(spec: str = "main", ids: list[str] | str | None = None,
                   variants: list[str] | str | None = None) -> list[Question]:
    """Questions from one or more sets: ``"main"``, ``"main,preregistered"``, ``"main:plain,template"``.

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
