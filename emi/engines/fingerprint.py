"""The served model is the model: before a server samples a checkpoint (and LoRA adapter) for the
first time, emi asks it for a short greedy completion of one fixed prompt with its top-k
log-probs, and scores the same tokens with the in-process model that emi already holds for the
run (teacher-forced: one forward pass of a few dozen tokens, no second copy of the weights). The
largest gap between the two log-probs of any token the server ranked (:data:`TOP` at each of
:data:`STEPS` positions) must stay within the tolerance of the coarser of the two dtypes
(:data:`TOLERANCE`); otherwise the command stops in one sentence (a server that loads another
model, another adapter, or the same weights wrongly, e.g. a tied head untied).

A verdict that passed is cached (:class:`Fingerprints`, a small JSON under the pair caches'
root), keyed by the engine (vLLM's version, or the server's URL), the checkpoint and adapter as
served, the dtypes, and the in-process model's weights fingerprints (emi.models.loading.fingerprint),
so a changed checkpoint is checked again; a failed one is checked again on every run.

A server that returns no log-probs (``transformers serve``) cannot be checked: emi says so once and
samples there unchecked."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import torch
from jaxtyping import Float

from emi.core.errors import ConfigError
from emi.engines.served import Served, plain
from emi.models.chat import CHAT, Render, has_template, prompt_ids

if TYPE_CHECKING:
    from emi.models.loading import LoadedModel

PROMPT = [{"role": "user", "content": "Name three colours, then say which one you like best and why."}]
STEPS = 4  # greedy tokens the server generates (and emi scores)
TOP = 5  # log-probs per position compared
# the largest |log p_server - log p_in-process| (nats) allowed, by the coarser dtype of the two; measured in
# docs/engines.md ("The served model is the model"): vLLM against transformers on CPU, fp32 far within
# 0.02; bf16 up to 1.6 on Qwen3-Next stand-ins (transformers' own bf16 is 5 nats from its fp32 there);
# a head of zeros or another model misses by 7 nats
TOLERANCE = {"float32": 0.02, "float16": 0.5, "bfloat16": 3.0}
_COARSE = ("bfloat16", "float16", "float32")  # coarsest first
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "auto": "float32"}


class Verdict(TypedDict):
    """A served model that passed the check, as the verdict cache (served-fingerprints.json) keeps it."""

    checkpoint: str
    """The checkpoint served."""
    adapter: str | None
    """Its adapter (None: none)."""
    engine: Mapping[str, object]
    """The engine that served it (its describe())."""
    dtype: str
    """The dtype the tolerance was taken at."""
    gap: float
    """The largest log-prob gap measured, nats."""
    tolerance: float
    """The tolerance at that dtype, nats."""
    compared: int
    """Tokens compared."""


class Gap(NamedTuple):
    """How far the server's log-probs are from the in-process model's: the largest gap (nats), at
    which generated position, for which token, and how many tokens were compared."""

    gap: float
    position: int
    token: int
    compared: int


def tolerance(*dtypes: str) -> tuple[str, float]:
    """The coarsest of these dtypes (torch or vLLM names) and its tolerance."""
    names = [DTYPE_NAMES.get(str(d).replace("torch.", ""), str(d).replace("torch.", "")) for d in dtypes]
    coarse = next((c for c in _COARSE if c in names), "float32")
    return coarse, TOLERANCE[coarse]


@contextlib.contextmanager
def unhooked(model: torch.nn.Module) -> Iterator[None]:
    """``model`` with every forward hook set aside (a condition's steering or ablation), put back after:
    the fingerprint is the checkpoint's, not the condition's."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    try:
        for m, _, _ in saved:
            m._forward_hooks, m._forward_pre_hooks = type(m._forward_hooks)(), type(m._forward_pre_hooks)()
        yield
    finally:
        for m, hooks, pre in saved:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre


def reference(lm: LoadedModel, prompt: Sequence[int], generated: Sequence[int], hooked: bool = False
              ) -> Float[torch.Tensor, "step vocab"]:
    """The in-process model's log-probs of the next token after ``prompt`` and each prefix of
    ``generated`` (teacher-forced, one forward pass; its hooks set aside unless ``hooked``, then
    with ``generated`` counted as generated positions)."""
    from emi.interventions.hooks import answer_starts

    ids = torch.tensor([list(prompt) + list(generated)], device=lm.device)
    with (torch.no_grad(), lm.active() as model, (contextlib.nullcontext() if hooked else unhooked(model)),
          answer_starts([len(prompt)])):  # steering at prompt or generated positions counts as in generation
        logits = model(input_ids=ids).logits[0].float()
    start = len(prompt) - 1
    return torch.log_softmax(logits[start:start + len(generated)], dim=-1).cpu()


def _token_id(key: str, tokenizer: Any) -> int | None:
    if key.startswith("token_id:"):
        return int(key.split(":", 1)[1])
    ids = tokenizer.convert_tokens_to_ids(key)  # a server that names tokens by their vocabulary entry
    return ids if isinstance(ids, int) and ids != tokenizer.unk_token_id else None


def served_logprobs(choice: Mapping[str, Any], tokenizer: Any) -> tuple[list[int], list[dict[int, float]]] | None:
    """The generated token ids and each position's top log-probs by token id from an OpenAI completion
    choice (vLLM: ``return_tokens_as_token_ids``), or None where the server returned none."""
    lp = choice.get("logprobs") or {}
    tops = lp.get("top_logprobs")
    tokens = choice.get("token_ids") or [_token_id(t, tokenizer) for t in lp.get("tokens") or []]
    if not tops or not tokens or None in tokens:
        return None
    out = [{i: float(v) for k, v in top.items() if (i := _token_id(k, tokenizer)) is not None} for top in tops]
    return [int(t) for t in tokens][:len(out)], out


def gap(ref: Float[torch.Tensor, "step vocab"], tops: Sequence[dict[int, float]]) -> Gap:
    """The largest gap between the server's top log-probs and the reference's for the same tokens."""
    best = Gap(0.0, 0, -1, 0)
    n = 0
    for j, top in enumerate(tops):
        for t, v in top.items():
            n += 1
            g = abs(v - float(ref[j, t])) if 0 <= t < ref.shape[1] else float("inf")
            if g > best.gap or best.token < 0:
                best = Gap(g, j, t, 0)
    return best._replace(compared=n)


@dataclass
class Fingerprints:
    """Which checkpoints (and adapters) a server has been checked to serve, the in-process models to
    check them against, and the cache of verdicts that passed (``cache``: a JSON file, None: none)."""

    cache: Path | None = None
    models: list[Any] = field(default_factory=list)  # LoadedModels and loaded ModelPairs
    checked: set[str] = field(default_factory=set)
    lock: Any = field(default_factory=threading.Lock, repr=False)

    def know(self, *models: Any) -> None:
        """The in-process models (LoadedModels, or loaded pairs whose roles are looked up when needed)."""
        with self.lock:
            self.models.extend(m for m in models if hasattr(m, "models") or hasattr(m, "provenance"))

    def model_for(self, served: Served) -> tuple[LoadedModel, bool] | None:
        """The in-process model emi holds (loaded now) for this checkpoint and adapter, and whether its
        hooks stay on: a checkpoint emi exported with a direction ablated from every writer
        (emi.interventions.weights.write_ablated) is its role's model under that ablation's hooks,
        which the run applies while the export samples; None: no such model."""
        export = Path(served.checkpoint) / "export.json"
        made = json.loads(export.read_text()) if served.adapter is None and export.is_file() else None
        for m in self.models:
            for lm in (m.models.values() if hasattr(m, "models") else [m]):
                if made is not None and lm.role == made.get("role") and lm.identity() == made.get("model"):
                    return lm, True
                p = plain(lm)
                if (p.checkpoint, p.adapter) == (served.checkpoint, served.adapter):
                    return lm, False
        return None

    def check(self, url: str, model: str, served: Served, server_dtype: str, engine: Mapping[str, object],
              label: str, fix: str, extra: Mapping[str, object] | None = None) -> Gap | None:
        """Check once that the server at ``url`` (serving ``served`` as ``model``) is the in-process model;
        the gap measured (None: cached, unchecked or no in-process model to check against)."""
        what = Served(served.checkpoint, served.adapter)
        found = self.model_for(what)
        if found is None:
            return None
        lm, hooked = found
        ident = lm.identity()
        key = hashlib.sha256(json.dumps([engine, what.key(), server_dtype, ident], sort_keys=True,
                                        default=str).encode()).hexdigest()[:20]
        with self.lock:
            if key in self.checked or key in self._read():
                self.checked.add(key)
                return None
            # the probe in the chat template, or as a plain transcript for a base checkpoint without one
            how = CHAT if has_template(lm.tokenizer) else Render("transcript")
            ids = prompt_ids(lm.tokenizer, [PROMPT], how)[0]
            got = ask(url, model, ids, lm.tokenizer, extra or {})
            name = what.checkpoint + (f" with adapter {what.adapter}" if what.adapter else "")
            if got is None:
                print(f"emi: note: {label} returns no log-probs, so emi cannot check that it serves {name}; "
                      f"sampling there unchecked", file=sys.stderr)
                self.checked.add(key)
                return None
            tokens, tops = got
            measured = gap(reference(lm, ids, tokens, hooked), tops)
            dtype, tol = tolerance(server_dtype, str(next(lm.model.parameters()).dtype))
            if not measured.gap <= tol:
                raise ConfigError(f"{label} does not serve {name} as emi loads it: its log-probs of a short greedy "
                                  f"answer differ from the in-process model's by up to {measured.gap:.3g} nats "
                                  f"(token {measured.token} at step {measured.position + 1}; the tolerance at "
                                  f"{dtype} is {tol}); {fix}")
            self.checked.add(key)
            self._write(key, {"checkpoint": what.checkpoint, "adapter": what.adapter, "engine": engine,
                              "dtype": dtype, "gap": round(measured.gap, 6), "tolerance": tol,
                              "compared": measured.compared})
            return measured

    def _read(self) -> dict[str, Verdict]:
        if self.cache is None or not self.cache.is_file():
            return {}
        try:
            data = json.loads(self.cache.read_text())
        except (OSError, ValueError):  # a torn or foreign file: check again and rewrite it
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, key: str, verdict: Verdict) -> None:
        if self.cache is None:
            return
        data = {**self._read(), key: verdict}
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache.with_name(f".{self.cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.cache)


def cache_file(root: str | Path | None) -> Path:
    """Where verdicts are cached: beside the pair caches (``--root``, default activations/)."""
    return Path(root or "activations") / "served-fingerprints.json"


def ask(url: str, model: str, ids: Sequence[int], tokenizer: Any, extra: Mapping[str, Any], timeout: float = 600.0,
        steps: int = STEPS) -> tuple[list[int], list[dict[int, float]]] | None:
    """The server's greedy completion of ``ids`` with its top log-probs, or None where it gives none."""
    import requests

    body = {"model": model, "prompt": list(ids), "max_tokens": steps, "temperature": 0.0, "logprobs": TOP,
            "return_tokens_as_token_ids": True, "return_token_ids": True, "skip_special_tokens": False,
            "seed": 0, **extra}
    try:
        r = requests.post(f"{url}/completions", json=body, timeout=timeout)
    except requests.RequestException as exc:
        raise ConfigError(f"the server at {url} did not answer emi's check that it serves {model} "
                          f"({type(exc).__name__}); is it running?") from None
    if r.status_code != 200:
        return None
    choices = r.json().get("choices") or [{}]
    return served_logprobs(choices[0], tokenizer)
