"""The vector every intervention takes, and the one projection every backend shares.

Interventions depend on this small interface, not on :mod:`emi.directions`: a bare unit-able
tensor of width d_model, or any per-layer artifact with the methods of :class:`LayeredVector`
(``emi.directions.direction.Direction`` is one). A direction is d_model wide on every
architecture; on a model with several residual streams (Qwen4-Exp) it applies to every stream.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float

from emi.core.errors import ConfigError, DirectionError
from emi.models import layers as L
from emi.models.layers import HFModel


@runtime_checkable
class LayeredVector(Protocol):
    """One vector per layer, with the residual norms it was found at (e.g. a Direction)."""

    @property
    def best_layer(self) -> int: ...

    def at(self, layer: int, unit: bool = True) -> Float[torch.Tensor, " d_model"]: ...

    def norm_at(self, layer: int) -> float: ...

    def check_fits(self, d_model: int, n_layers: int | None = None, what: str = "the model") -> None: ...

    def summary(self) -> dict[str, Any]: ...


Vector = LayeredVector | Float[torch.Tensor, " d_model"]


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.float().norm()
    if not torch.isfinite(n) or n == 0:
        raise DirectionError("the direction vector is zero or not finite")
    return v.float() / n


def check_alpha(alpha: float) -> float:
    if not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ConfigError(f"alpha must be a finite number, found {alpha!r}")
    return float(alpha)


def check_model(model: HFModel, what: str = "steer, ablate or orthogonalise") -> str:
    """The model type, after checking emi knows where ``what`` acts on it: one sentence naming the
    model and what works otherwise (see :func:`emi.models.layers.check_architecture`)."""
    return L.check_architecture(model, f"the model to {what}")


def unit_vector(direction: Vector, layer: int | None = None,
                model: HFModel | None = None) -> Float[torch.Tensor, " d_model"]:
    """The unit vector of ``direction`` at ``layer`` (default: its best layer), checked against
    ``model``'s width when given. Every backend's interventions take their vector from here."""
    if isinstance(direction, torch.Tensor):
        if model is not None and (direction.ndim != 1 or direction.shape[0] != L.d_model(model)):
            extra = (f" (its {L.n_streams(model)} residual streams are {L.d_model(model)} wide each, and a "
                     f"direction applies to every stream)") if L.n_streams(model) > 1 else ""
            raise DirectionError(f"the direction has shape {tuple(direction.shape)} but the model has d_model "
                                 f"{L.d_model(model)}{extra}")
        return _unit(direction)
    if model is not None:
        direction.check_fits(L.d_model(model), L.n_layers(model))
    return direction.at(direction.best_layer if layer is None else layer)


def steer_delta(direction: Vector, layer: int, alpha: float, relative: bool = False,
                model: HFModel | None = None) -> Float[torch.Tensor, " d_model"]:
    """What steering adds at ``layer`` (to every residual stream): alpha times the unit direction
    (times the layer's residual norm when ``relative``)."""
    if relative and isinstance(direction, torch.Tensor):
        raise ConfigError("relative alpha needs a Direction artifact (it carries the residual norms)")
    scale = alpha * (direction.norm_at(layer) if relative else 1.0)  # type: ignore[union-attr]
    return scale * unit_vector(direction, layer, model)


def project_out(x: Float[torch.Tensor, "*batch d_model"], u: Float[torch.Tensor, " d_model"], target: float = 0.0
                ) -> Float[torch.Tensor, "*batch d_model"]:
    """``x`` with its component along the unit vector ``u`` set to ``target`` (0: removed). The one
    projection behind every ablation: the HF hooks, TransformerLens, nnsight, and (applied to the
    output dimension of a residual writer's weight) orthogonalisation."""
    return x - ((x @ u) - target)[..., None] * u


def project_out_streams(x: Float[torch.Tensor, "*batch sd"], u: Float[torch.Tensor, " d_model"], n: int,
                        target: float = 0.0) -> Float[torch.Tensor, "*batch sd"]:
    """:func:`project_out` applied to each of the ``n`` residual streams of ``x`` ([..., n * d_model])."""
    if n == 1:
        return project_out(x, u, target)
    return project_out(L.streams(x, n), u, target).flatten(-2)
