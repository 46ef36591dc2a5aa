"""What an intervention costs besides the behaviour it targets (no judge, deterministic).

"Ablating the direction removes EM" means little if the ablation also breaks the model. For every
condition of a steer run, beside the EM rate and coherence:

- ``kl``: the KL divergence KL(unmodified || intervened) of the model's next-token distribution,
  teacher-forced on benign conversations (a prompt and a reference answer; the pair kit's benign
  set), averaged over the answer's tokens, then over conversations (nats per token, 95% bootstrap
  CI over conversations). The directional-ablation literature reports this trade-off (Arditi et
  al. 2024, "Refusal in language models is mediated by a single direction", measure KL on
  harmless prompts); 0 for a condition without an intervention.
- ``aligned_delta``: the change in the mean per-token log-probability of the aligned answers of
  the option pairs (emi.behaviour.logprob), intervened minus unmodified, averaged over pairs (CI over
  pairs): does the intervention make the aligned answer itself less likely, or only the
  misaligned one?

The unmodified model is the same model without the intervention (the finetuned model for
``finetuned - persona``, the base for ``base + 8 persona``), so each number isolates the
intervention. Steering by position counts the reference answer as generated, as in sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from emi.behaviour.logprob import answer_logits
from emi.behaviour.metrics import bootstrap
from emi.behaviour.records import Record
from emi.core import plugins
from emi.core.errors import ConfigError, read_yaml
from emi.core.paths import DATA
from emi.models import chat
from emi.models.loading import LoadedModel

BENIGN_FILE = DATA / "benign.yaml"


@dataclass(frozen=True)
class BenignItem:
    """One benign conversation: the messages before the answer and a reference answer."""

    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content), ending with a user turn
    response: str

    def chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


_SETS: dict[str, Callable[[], list[BenignItem]]] = {}


def register_benign_set(name: str, loader: Callable[[], list[BenignItem]]) -> None:
    """Make ``name`` a benign set (``--benign NAME``); plugins register their own (the organism's)."""
    if name == "benign":
        raise ConfigError("benign set 'benign' is built in and cannot be replaced")
    _SETS[name] = loader


def load_benign_file(path: str | Path) -> list[BenignItem]:
    """A user's benign set, validated: a YAML list of {id, prompt, response, system (optional)}."""
    raw = read_yaml(path, "benign set file")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"benign set file {str(path)!r} must be a non-empty list of entries with 'id', "
                          f"'prompt' and 'response'")
    out, seen = [], set()
    for i, e in enumerate(raw):
        where = f"entry {i} of {str(path)!r}"
        if not isinstance(e, dict) or not {"id", "prompt", "response"} <= set(e):
            raise ConfigError(f"{where} needs 'id', 'prompt' and 'response' (strings); 'system' is optional")
        bad = [k for k in ("id", "prompt", "response", "system")
               if k in e and (not isinstance(e[k], str | int) or not str(e[k]).strip())]
        if bad:
            raise ConfigError(f"{where}: {bad[0]!r} must be a non-empty string, found {e[bad[0]]!r}")
        if str(e["id"]) in seen:
            raise ConfigError(f"{where}: id {e['id']!r} appears twice; ids must be unique")
        seen.add(str(e["id"]))
        msgs = ((("system", str(e["system"]).strip()),) if e.get("system") else ()) + (("user", str(e["prompt"]).strip()),)
        out.append(BenignItem(str(e["id"]), msgs, str(e["response"]).strip()))
    return out


@lru_cache(maxsize=1)
def _builtin() -> tuple[BenignItem, ...]:
    return tuple(load_benign_file(BENIGN_FILE))


def benign_set_names() -> list[str]:
    plugins.load()
    return ["benign", *_SETS]


def load_benign(name: str) -> list[BenignItem]:
    """A benign set by name (``benign``: emi's everyday questions with reference answers; a
    registered set) or a path to a YAML file."""
    if name == "benign":
        return list(_builtin())
    plugins.load()
    if name in _SETS:
        return _SETS[name]()
    if Path(name).suffix in (".yaml", ".yml") or Path(name).exists():
        return load_benign_file(name)
    raise ConfigError(f"unknown benign set {name!r}; use {', '.join(benign_set_names())}, or a path to a YAML "
                      f"file of {{id, prompt, response}} entries")


def benign_kl(lm: LoadedModel, items: Sequence[BenignItem], intervention: Callable[[], AbstractContextManager[Any]],
              batch_size: int = 8) -> list[float]:
    """Per benign conversation: KL(unmodified || intervened) of the next-token distribution, mean
    over the reference answer's tokens (nats per token). ``intervention()`` returns a fresh context
    manager that applies the intervention to ``lm``'s model; it is entered once per batch, so no
    full-vocabulary distribution is ever kept beyond one batch."""
    return benign_kls(lm, items, [intervention], batch_size)[0]


def benign_kls(lm: LoadedModel, items: Sequence[BenignItem],
               interventions: Sequence[Callable[[], AbstractContextManager[Any]]], batch_size: int = 8
               ) -> list[list[float]]:
    """:func:`benign_kl` of each of several interventions on one model, the unmodified model's
    distribution computed once per batch for all of them (batches by length,
    :func:`emi.models.chat.by_length`; each list in the order of ``items``)."""
    if not items:
        raise ConfigError("the benign set is empty; side effects need at least one conversation")
    tok = lm.tokenizer
    p_all = [chat.encode(tok, p) for p in chat.render_many(tok, [it.chat() for it in items])]
    a_all = [chat.encode(tok, it.response) for it in items]
    out = [[0.0] * len(items) for _ in interventions]
    with lm.active():
        for batch in chat.by_length([len(p) + len(a) for p, a in zip(p_all, a_all, strict=True)], batch_size):
            p_ids, a_ids = [p_all[j] for j in batch], [a_all[j] for j in batch]
            ref = answer_logits(lm, p_ids, a_ids).log_softmax(-1)
            for row, intervention in zip(out, interventions, strict=True):
                with intervention():
                    new = answer_logits(lm, p_ids, a_ids).log_softmax(-1)
                kl = (ref.exp() * (ref - new)).sum(-1).clamp_min(0).cpu()
                for j, x in zip(batch, kl.split([len(a) for a in a_ids]), strict=True):
                    row[j] = float(x.mean())
    return out


@dataclass(frozen=True)
class SideEffects(Record):
    """KL on benign text and the aligned answers' log-prob change of one condition (a results row's
    ``kl*``, ``n_benign`` and ``aligned_delta*`` columns)."""

    kl: float  # mean KL(unmodified || intervened), nats per token, over benign conversations
    kl_lo: float
    kl_hi: float
    n_benign: int = 0
    aligned_delta: float = float("nan")  # mean change in the aligned answers' per-token log-prob (nats); nan without pairs
    aligned_delta_lo: float = float("nan")
    aligned_delta_hi: float = float("nan")
    n_pairs: int = field(default=0, metadata={"written": False})  # the logprob_ columns have it


def side_effects(lm: LoadedModel, items: Sequence[BenignItem], intervention: Callable[[], AbstractContextManager[Any]] | None,
                 aligned_unmodified: Sequence[float] = (), aligned_intervened: Sequence[float] = (),
                 seed: int = 0) -> SideEffects:
    """KL on ``items`` and the aligned-answer log-prob change for one condition; ``intervention``
    None (a condition without one) gives exactly 0 for both."""
    kl = None if intervention is None else benign_kl(lm, items, intervention)
    return summarize(kl, len(items), aligned_unmodified, aligned_intervened, seed)


def summarize(kl: Sequence[float] | None, n_benign: int, aligned_unmodified: Sequence[float] = (),
              aligned_intervened: Sequence[float] = (), seed: int = 0) -> SideEffects:
    """One condition's :class:`SideEffects` from its per-conversation KLs (:func:`benign_kls`) and the
    aligned answers' log-probs without and with its intervention; ``kl`` None (a condition without
    an intervention) gives exactly 0 for both."""
    n_pairs = len(aligned_intervened)
    if kl is None:
        zero_kl = (0.0, 0.0, 0.0)
        zero_lp = (0.0, 0.0, 0.0) if n_pairs else (float("nan"),) * 3
        return SideEffects(*zero_kl, n_benign, *zero_lp, n_pairs)
    if len(aligned_unmodified) != n_pairs:
        raise ValueError("aligned log-probs of the unmodified and intervened model cover different pairs")
    deltas = [b - a for a, b in zip(aligned_unmodified, aligned_intervened, strict=True)]
    lp = bootstrap(deltas, seed=seed) if deltas else (float("nan"),) * 3
    return SideEffects(*bootstrap(kl, seed=seed), n_benign, *lp, n_pairs)
