"""Interventions on the residual stream of a Hugging Face model with PyTorch forward hooks (the
fast path): steer (+alpha * d) and ablate (project d out).

Every intervention is an imperative ``patch_*() -> Handle`` plus a context manager that removes
the handle in ``finally``: after a ``with`` block the model is bit-identical in behaviour, even
when the block raised. ``alpha = 0`` is an exact no-op (no hook is installed).

The other backends have their own modules, sharing the vector and the projection of
:mod:`emi.interventions.vector`: :mod:`emi.interventions.transformerlens` (``fwd_hooks`` lists),
:mod:`emi.interventions.nnsight_edits` (envoy edits inside a trace) and
:mod:`emi.interventions.weights` (orthogonalised weights, exported checkpoints).

Several residual streams (Qwen4-Exp's hyper-connections): a direction is d_model wide and
applies to every stream. Steering adds alpha * d to every stream after the block (so emi's
``resid``, the mean over streams, moves by exactly alpha * d); ablation projects d out of every
residual writer (the embedding, each PLE, each token mixer and MLP output before the block writes
it into the streams), which leaves every stream with zero projection on d.

Positions for steering: ``all`` tokens, ``prompt`` tokens only, or ``generated`` tokens only;
they work with KV-cache generation (a pre-hook on the decoder tracks absolute positions). A
teacher-forced pass over prompt + answer (log-prob metrics, side effects) marks where each row's
answer starts with :func:`answer_starts`, so it is steered exactly as generation would steer it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import nn

from emi.core.errors import ConfigError
from emi.interventions.vector import (
    LayeredVector,
    Vector,
    check_alpha,
    check_model,
    project_out,
    project_out_streams,
    steer_delta,
    unit_vector,
)
from emi.models import layers as L
from emi.models.layers import HFModel

__all__ = ["STEER_POSITIONS", "Handle", "LayeredVector", "Vector", "ablate", "answer_starts", "check_alpha",
           "nothing", "patch_ablate", "patch_steer", "position_dependent", "project_out", "steer", "steer_delta",
           "unit_vector"]

STEER_POSITIONS = ("all", "prompt", "generated")
_ANSWER_STARTS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("answer_starts", default=None)


@contextlib.contextmanager
def answer_starts(starts: Sequence[int] | Int[torch.Tensor, " batch"]) -> Iterator[None]:
    """Inside this block, a fresh forward pass over a batch of prompt + answer sequences counts
    each row's positions from ``starts[row]`` on as generated (Int[Tensor, "batch"]): what a
    teacher-forced pass needs for ``positions="prompt"`` / ``"generated"`` steering to mean what
    it means during generation."""
    token = _ANSWER_STARTS.set(torch.as_tensor(starts, dtype=torch.long))
    try:
        yield
    finally:
        _ANSWER_STARTS.reset(token)


@dataclass
class Handle:
    """Removes the hooks of one intervention (idempotent)."""

    handles: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _Positions:
    """Tracks the absolute positions of the tokens in the current forward pass."""

    def __init__(self, model: HFModel) -> None:
        self.start = 0
        self.prompt_len: int | None = None
        self.prompt_ids: torch.Tensor | None = None
        inner = L.unwrap(model).model
        self.handle = inner.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, _mod: nn.Module, args: tuple, kwargs: dict) -> None:
        past = kwargs.get("past_key_values")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        n = int(ids.shape[1])
        past_len = int(past.get_seq_length()) if past is not None and hasattr(past, "get_seq_length") else 0
        self.start = past_len
        if past_len == 0:  # a fresh pass: a new prompt, or a no-cache generation step extending it
            p = self.prompt_ids
            extends = (p is not None and ids.dtype == torch.long and ids.shape[0] == p.shape[0]
                       and ids.shape[1] > p.shape[1] and torch.equal(ids[:, : p.shape[1]], p))
            if not extends:
                self.prompt_len = n
                self.prompt_ids = ids.detach().clone() if ids.dtype == torch.long else None

    def mask(self, seq_len: int, which: str, device: torch.device) -> torch.Tensor | None:
        """0/1 mask of tokens to steer in the current pass, [pos] or, for a teacher-forced pass
        under :func:`answer_starts`, [batch, pos]; None means all."""
        if which == "all":
            return None
        pos = torch.arange(self.start, self.start + seq_len, device=device)
        starts = _ANSWER_STARTS.get()
        if starts is not None and self.start == 0:
            generated = pos[None, :] >= starts.to(device)[:, None]
        else:
            generated = pos >= (self.prompt_len if self.prompt_len is not None else seq_len)
        return (generated if which == "generated" else ~generated).to(torch.float32)

    def remove(self) -> None:
        self.handle.remove()


def position_dependent(model: nn.Module) -> bool:
    """Whether a hook on ``model`` steers only some positions (it needs unpacked batches)."""
    return any(isinstance(getattr(h, "__self__", None), _Positions)
               for m in model.modules() for h in m._forward_pre_hooks.values())


def patch_steer(model: HFModel, direction: Vector, alpha: float,
                layers: Sequence[int] | str | int | None = None, positions: str = "all",
                relative: bool = False) -> Handle:
    """Add ``alpha`` times the unit direction to the residual stream after each chosen block (to
    every stream of a hyper-connection model, so its ``resid`` moves by exactly alpha * d).

    ``relative``: alpha is a fraction of the typical residual norm at that layer (from the
    direction artifact). ``layers`` defaults to the direction's best layer.
    """
    check_model(model, "steer")
    alpha = check_alpha(alpha)
    if positions not in STEER_POSITIONS:
        raise ConfigError(f"unknown positions {positions!r}; expected one of {', '.join(STEER_POSITIONS)}")
    if layers is None:
        if isinstance(direction, torch.Tensor):
            raise ConfigError("give layers= when steering with a bare vector")
        layers = [direction.best_layer]
    layer_list = L.resolve_layers(layers, L.n_layers(model))
    unit_vector(direction, None if isinstance(direction, torch.Tensor) else layer_list[0], model)  # width check
    handle = Handle()
    if alpha == 0:
        return handle  # exact no-op
    tracker = _Positions(model) if positions != "all" else None
    if tracker is not None:
        handle.handles.append(tracker)
    n = L.n_streams(model)
    for layer in layer_list:
        module = L.hf_module(model, layer, "resid")
        p = next(module.parameters())
        delta = steer_delta(direction, layer, alpha, relative, model).to(device=p.device, dtype=p.dtype)
        handle.handles.append(module.register_forward_hook(_steer_hook(delta, n, tracker, positions)))
    return handle


def _steer_hook(delta: torch.Tensor, n: int, tracker: _Positions | None, positions: str) -> Any:
    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        h = L.output_tensor(out)
        m = None if tracker is None else tracker.mask(h.shape[1], positions, h.device)
        if m is None:
            return L.replace_output(out, L.add_to_streams(h, delta, n))
        m = m[None, :, None] if m.dim() == 1 else m[:, :, None]
        return L.replace_output(out, L.add_to_streams(h, m.to(h.dtype) * delta, n))

    return hook


def _ablation_points(model: HFModel, layers: Sequence[int] | None) -> list[tuple[nn.Module, int]]:
    """Every writer to the residual stream(s) (embedding, PLE, token mixer and MLP outputs) with the
    streams its output spans, for all layers; the block outputs (every stream) of chosen layers otherwise."""
    if layers is None:
        return [(module, n) for _name, module, n in L.hook_writers(model)]
    return [(L.hf_module(model, layer, "resid"), L.n_streams(model)) for layer in layers]


def patch_ablate(model: HFModel, direction: Vector, layers: Sequence[int] | str | None = "all",
                 source_layer: int | None = None, mean: float | None = None) -> Handle:
    """Project one unit direction out of the residual stream (every stream of a hyper-connection model).

    ``layers="all"`` removes it from every writer (embedding, PLE, attention and MLP outputs), so
    no stream carries any of it anywhere: equal to :func:`emi.interventions.weights.orthogonalize`.
    Chosen layers project it out of those blocks' outputs. ``mean``: set the projection to this
    value instead of zero (mean ablation). ``source_layer``: which layer's vector of a Direction
    (default: its best).
    """
    check_model(model, "ablate")
    v = unit_vector(direction, source_layer, model)
    if mean is not None and not math.isfinite(mean):
        raise ConfigError(f"the mean projection must be finite, found {mean}")
    layer_list = None if layers in ("all", None) else L.resolve_layers(layers, L.n_layers(model))  # type: ignore[arg-type]
    if mean is not None and layer_list is None:
        raise ConfigError("mean ablation sets the projection at chosen layers' outputs; pass layers=[...]")
    handle = Handle()
    target = 0.0 if mean is None else mean
    for module, n in _ablation_points(model, layer_list):
        p = next(module.parameters())
        u = v.to(device=p.device, dtype=p.dtype)

        def hook(_m: nn.Module, _i: Any, out: Any, u: torch.Tensor = u, n: int = n) -> Any:
            return L.replace_output(out, project_out_streams(L.output_tensor(out), u, n, target))

        handle.handles.append(module.register_forward_hook(hook))
    return handle


@contextlib.contextmanager
def steer(model: HFModel, direction: Vector, alpha: float, **kw: Any) -> Iterator[Handle]:
    """``with steer(model, d, alpha=8, layers=[2]): ...`` (see :func:`patch_steer`)."""
    h = patch_steer(model, direction, alpha, **kw)
    try:
        yield h
    finally:
        h.remove()


@contextlib.contextmanager
def ablate(model: HFModel, direction: Vector, **kw: Any) -> Iterator[Handle]:
    """``with ablate(model, d): ...`` (see :func:`patch_ablate`)."""
    h = patch_ablate(model, direction, **kw)
    try:
        yield h
    finally:
        h.remove()


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield None
