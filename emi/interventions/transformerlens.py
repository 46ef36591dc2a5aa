"""TransformerLens backend: ``fwd_hooks`` lists for ``tl_model.hooks(fwd_hooks=...)`` on a
``HookedTransformer`` or ``TransformerBridge`` (built by :mod:`emi.models.layers`), sharing the
vector and projection of :mod:`emi.interventions.vector`.

TransformerLens's bridge has no adapter for models with several residual streams (Qwen4-Exp):
:func:`emi.models.layers.tl_bridge` refuses them, naming the HF hooks and nnsight, which work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from emi.core.errors import ConfigError
from emi.interventions.vector import Vector, check_alpha, project_out, steer_delta, unit_vector
from emi.models import layers as L


def _check_tl(tl_model: Any) -> None:
    """TransformerLens models emi builds are single-stream; a bridge over anything else is refused."""
    if tl_model is None:
        return
    cfg = getattr(tl_model, "cfg", None)
    arch = str(getattr(cfg, "original_architecture", "") or "")
    if arch and "Qwen" not in arch:
        raise ConfigError(f"the TransformerLens model is a {arch}, whose hook layout emi does not know: emi's "
                          f"TransformerLens hooks act on the Qwen models of emi.models.layers.ARCHITECTURES")


def tl_steer_hooks(direction: Vector, alpha: float, layers: Sequence[int], relative: bool = False,
                   tl_model: Any = None) -> list[tuple[str, Any]]:
    """``fwd_hooks`` adding alpha * d at ``blocks.l.hook_resid_post`` (``tl_model``: checked when given)."""
    _check_tl(tl_model)
    alpha = check_alpha(alpha)
    if alpha == 0:
        return []
    out = []
    for layer in layers:
        delta = steer_delta(direction, layer, alpha, relative)

        def fn(act: torch.Tensor, hook: Any, delta: torch.Tensor = delta) -> torch.Tensor:
            return act + delta.to(act.device, act.dtype)

        out.append((L.tl_hook_name(layer, "resid"), fn))
    return out


def tl_ablate_hooks(direction: Vector, n_layers: int, source_layer: int | None = None,
                    linear_layers: Sequence[int] = (), tl_model: Any = None) -> list[tuple[str, Any]]:
    """``fwd_hooks`` projecting the direction out of every writer (embedding, attn and MLP outputs).
    ``linear_layers``: layers whose mixer is linear attention (``emi.models.layers.linear_layers(hf_model)``)."""
    _check_tl(tl_model)
    v = unit_vector(direction, source_layer)

    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return project_out(act, v.to(act.device, act.dtype))

    lin = set(linear_layers)
    names = ["hook_embed"] + [L.tl_hook_name(layer, s, layer in lin) for layer in range(n_layers)
                              for s in ("attn", "mlp")]
    return [(n, fn) for n in names]
