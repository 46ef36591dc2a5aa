"""Readers: one function per library that reads activations off a model's forward pass.

Three readers produce the same rows: :func:`hf_reader` (the fast path: PyTorch forward hooks
on the Hugging Face model, no logits, and the forward pass stopped right after the last
requested layer), :func:`tl_reader` (a TransformerLens ``HookedTransformer`` or
``TransformerBridge``) and :func:`nnsight_reader` (an nnsight ``TransformersModel``). vLLM's
reader is ``emi.engines.vllm.capture``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import nn

from emi.models import layers as L
from emi.models.loading import LoadedModel

Acts = dict[tuple[str, int], Float[torch.Tensor, "batch pos d_model"]]  # (site, layer) -> activations
Reader = Callable[[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]], Acts]
ReaderFactory = Callable[[LoadedModel, Sequence[int], Sequence[str]], Reader]  # (model, layers, sites) -> Reader


class _Stop(Exception):
    pass


def hf_reader(model: nn.Module, layers: Sequence[int], sites: Sequence[str] = ("resid",)) -> Reader:
    """Forward hooks on the HF model; no unembedding, and no layer past the last one asked for.
    ``resid`` is d_model wide on every model (on one with several residual streams, their mean);
    ``resid_streams`` is every stream, [batch, pos, hc, d_model] (see :func:`emi.models.layers.site_tensor`)."""
    inner = L.unwrap(model)
    n = L.n_streams(model)
    wanted = [(s, layer) for layer in layers for s in sites]

    def read(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Acts:
        got: Acts = {}
        handles = []

        def make(key: tuple[str, int]):
            def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
                got[key] = L.site_tensor(out, key[0], n).detach()
                if len(got) == len(wanted):
                    raise _Stop

            return hook

        for key in wanted:
            handles.append(L.hf_module(model, key[1], key[0]).register_forward_hook(make(key)))
        try:
            with torch.no_grad():
                inner.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return got

    return read


def tl_reader(tl_model: Any, layers: Sequence[int], sites: Sequence[str] = ("resid",),
              linear_layers: Sequence[int] = ()) -> Reader:
    """A TransformerLens ``HookedTransformer`` or ``TransformerBridge`` (same hook names).
    ``linear_layers``: layers whose mixer is linear attention (``emi.models.layers.linear_layers(hf_model)``).

    Note: ``TransformerBridge.boot_transformers(..., hf_model=m)`` swaps ``m``'s submodules for
    bridge wrappers in place (no weight copy); emi's HF hooks still work on ``m`` afterwards.
    """
    lin = set(linear_layers)
    names = {L.tl_hook_name(layer, s, layer in lin): (s, layer) for layer in layers for s in sites}

    def read(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Acts:
        with torch.no_grad():
            _, cache = tl_model.run_with_cache(input_ids, attention_mask=attention_mask,
                                               names_filter=list(names), stop_at_layer=max(layers) + 1)
        return {key: cache[name] for name, key in names.items()}

    return read


def nnsight_reader(nn_model: Any, layers: Sequence[int], sites: Sequence[str] = ("resid",)) -> Reader:
    """An nnsight ``TransformersModel``: a trace that saves the layers and stops after the last."""

    order = sorted(sites, key=("attn", "mlp", "resid", "resid_streams").index)  # nnsight reads in execution order
    n = L.n_streams(nn_model._module)

    def read(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Acts:
        saved = {}
        with torch.no_grad(), nn_model.trace({"input_ids": input_ids, "attention_mask": attention_mask}) as tracer:
            for layer in layers:
                for s in order:
                    out = L.nnsight_envoy(nn_model, layer, s).output
                    got: Any = L.site_tensor(out[0] if L.is_tuple_output(nn_model, layer, s) else out, s, n)
                    saved[(s, layer)] = got.save()  # an nnsight proxy, saved
            tracer.stop()
        return {k: torch.as_tensor(v) for k, v in saved.items()}

    return read
