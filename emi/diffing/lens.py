"""Reading a residual-stream vector as tokens: the logit lens (through a model's own final norm
and unembedding) and a Patchscope-style readout (the vector written into an identity prompt's
last position at a layer, at several scales, and the next token read off)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float

from emi.models import layers as L
from emi.models.loading import LoadedModel

TokenValues = list[tuple[str, float]]


@torch.no_grad()
def unembed(lm: LoadedModel, vecs: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n vocab"]:
    """Logits of residual vectors through the model's final norm and unembedding. A model with
    several residual streams reads the vector written into every stream, through its stream mixer."""
    with lm.active() as model:
        inner = L.unwrap(model)
        body = inner.model
        p = next(inner.lm_head.parameters())
        n = L.n_streams(model)
        h = vecs.to(device=p.device, dtype=p.dtype)
        if n > 1:
            h = L.add_to_streams(torch.zeros(*h.shape[:-1], n * h.shape[-1], device=h.device, dtype=h.dtype), h, n)
            out = body.hyper_connection_mixer(h)
            h = out[0] if isinstance(out, tuple) else out
        elif hasattr(body, "norm"):
            h = body.norm(h)
        return inner.lm_head(h).float()


def top_tokens(logits: Float[torch.Tensor, " vocab"], tokenizer: Any, k: int = 10) -> TokenValues:
    """The ``k`` most probable tokens (softmax of ``logits``) with their probabilities."""
    probs = logits.float().softmax(-1)
    vals, idx = probs.topk(min(k, probs.numel()))
    return [(tokenizer.decode([int(i)]), round(float(v), 5)) for v, i in zip(vals, idx, strict=True)]


def logit_lens(lm: LoadedModel, vec: Float[torch.Tensor, " d_model"], k: int = 10) -> TokenValues:
    return top_tokens(unembed(lm, vec[None])[0], lm.tokenizer, k)


def identity_prompt(corpus: Sequence[Sequence[int]], tokenizer: Any, pairs: int = 3) -> list[int]:
    """``a a ; b b ; c c ; ?`` built from token ids of the corpus (so it is in any tokenizer's
    vocabulary): the model continues the pattern by repeating the last token, which a Patchscope
    replaces with the vector to read."""
    seen: list[int] = []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for ids in corpus:
        for t in ids:
            if t not in seen and t not in special:
                seen.append(t)
        if len(seen) >= pairs + 1:
            break
    sep = tokenizer(" ;", add_special_tokens=False)["input_ids"] or [seen[-1]]
    out: list[int] = []
    for t in seen[:pairs]:
        out += [t, t, *sep]
    return out + [seen[min(pairs, len(seen) - 1)]]


@torch.no_grad()
def patchscope(lm: LoadedModel, vec: Float[torch.Tensor, " d_model"], layer: int, prompt: Sequence[int],
               scales: Sequence[float], norm: float, k: int = 10) -> dict[str, TokenValues]:
    """Per scale s: the top next tokens when emi's residual at ``layer`` at the prompt's last position
    is set to ``s * norm`` times the unit vector (``norm``: the typical residual norm there)."""
    unit = vec.float() / vec.float().norm().clamp_min(1e-12)
    out: dict[str, TokenValues] = {}
    with lm.active() as model:
        n = L.n_streams(model)
        module = L.hf_module(model, layer, "resid")
        ids = torch.tensor([list(prompt)], device=lm.device)
        for s in scales:
            target = unit * (s * norm)

            def hook(_m: torch.nn.Module, _i: Any, o: Any, target: torch.Tensor = target) -> Any:
                h = L.output_tensor(o).clone()
                last = h[:, -1:, :]
                cur = L.resid_view(last, n)
                h[:, -1:, :] = L.add_to_streams(last, target.to(last.dtype).to(last.device) - cur, n)
                return L.replace_output(o, h)

            handle = module.register_forward_hook(hook)
            try:
                logits = model(input_ids=ids, use_cache=False).logits[0, -1]
            finally:
                handle.remove()
            out[f"{s:g}"] = top_tokens(logits, lm.tokenizer, k)
    return out
