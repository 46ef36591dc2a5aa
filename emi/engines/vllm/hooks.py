"""Hook functions that run inside a vLLM server process (vllm-lens ``Hook.fn``), sent there by
cloudpickle *by value*: emi is not installed in the engine environment, so this module imports
nothing but torch, and :func:`wire_hook` registers it to be pickled by value.

vllm-lens calls ``fn(ctx, hidden)`` with one request's slice of the residual stream after a
decoder layer, ``hidden``: [pos, d_model] (for Qwen's fused residual, vllm-lens hands over
``hidden + residual``, the stream emi calls layer l, and writes the change back into it).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import torch


class _WireTensor(TypedDict):
    data: str
    """The tensor's bytes, base64 (zstd-compressed first when ``compression`` says so)."""
    dtype: str
    """The numpy dtype of the bytes (``float32``)."""
    shape: list[int]
    """The tensor's shape."""


class WireTensor(_WireTensor, total=False):
    """vllm-lens's JSON form of a tensor (its ``serialize_tensor``), sent and received."""

    original_dtype: str
    """The torch dtype it had (``torch.bfloat16``: the bytes are viewed back as bfloat16)."""
    compression: str
    """``zstd``, or absent: the bytes are raw."""


class WireFn(TypedDict):
    """A function on the wire: cloudpickled, base64."""

    cloudpickle: str
    """The pickled function, base64."""


class WireHook(TypedDict):
    """vllm-lens's JSON form of ``Hook(fn, layer_indices, pre)`` (what ``Hook.model_dump()`` gives)."""

    fn: WireFn
    """The hook's function."""
    layer_indices: list[int]
    """The layers it runs at."""
    pre: bool
    """Before the layer (True) or after it."""


def project_out_fn(u: torch.Tensor, target: float = 0.0) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``hidden`` with its component along the unit vector ``u`` set to ``target``: the formula of
    emi.interventions.hooks.project_out, restated here because the server cannot import emi."""
    u = u.detach().float().cpu().contiguous()

    def fn(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        v = u.to(device=h.device, dtype=h.dtype)
        return h - ((h @ v) - target)[..., None] * v

    return fn


def steer_positions_fn(deltas: dict[int, torch.Tensor], prompt_len: int, positions: str
                       ) -> Callable[[Any, torch.Tensor], torch.Tensor | None]:
    """Add ``deltas[layer]`` at the prompt's tokens (``positions="prompt"``: absolute positions below
    ``prompt_len``) or at the generated ones (``"generated"``), as emi's HF hooks do.

    vllm-lens 1.3.0's position-indexed steering vectors count positions from 0 in every forward
    pass (it looks for ``seq_lens`` on the dict of attention metadata, finds none, and falls back
    to 0), so a prompt vector also steers every decoded token; this hook counts the request's
    tokens itself: ``ctx.saved`` persists across the forward passes of one request. A pass of
    several tokens after the prompt was seen is the request computed again from its start (vLLM
    recomputes a preempted request; prefix caching is off on servers emi starts)."""
    ds = {int(k): v.detach().float().cpu().contiguous() for k, v in deltas.items()}
    want_prompt = positions == "prompt"

    def fn(ctx: Any, h: torch.Tensor) -> torch.Tensor | None:
        key = f"seen{ctx.layer_idx}"
        seen = int(ctx.saved.get(key, 0))
        n = int(h.shape[0])
        if n > 1 and seen >= prompt_len:
            seen = 0
        ctx.saved[key] = seen + n
        pos = torch.arange(seen, seen + n, device=h.device)
        mask = pos < prompt_len if want_prompt else pos >= prompt_len
        if not bool(mask.any()):
            return None
        return h + mask[:, None].to(h.dtype) * ds[ctx.layer_idx].to(device=h.device, dtype=h.dtype)

    return fn


def program_fn(path: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``hidden + f(hidden)`` where ``f`` is the torch.export program at ``path`` (an SAE edit emi
    exported, emi.directions.sae.export_edit), computed in float32 as emi's HF hook computes it.
    The server reads the file (servers emi starts share its filesystem) once per process and device,
    keeping the latest program per device in a module of the server's ``sys.modules``, since this
    function arrives anew, by value, with every request."""

    def fn(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        import sys
        import types

        box = sys.modules.get("emi_vllm_programs")
        if box is None:
            box = sys.modules["emi_vllm_programs"] = types.ModuleType("emi_vllm_programs")
            box.loaded = {}  # type: ignore[attr-defined]
        device = str(h.device)
        held = box.loaded.get(device)  # type: ignore[attr-defined]
        if held is None or held[0] != path:  # one program per device: an SAE can take gigabytes
            box.loaded[device] = None  # type: ignore[attr-defined]
            held = box.loaded[device] = (path, torch.export.load(path).module().to(h.device))  # type: ignore[attr-defined]
        return h + held[1](h.float()).to(h.dtype)

    return fn


def wire_hook(fn: Callable[..., Any], layers: Sequence[int], pre: bool = False) -> WireHook:
    """vllm-lens's JSON wire form of ``Hook(fn, layer_indices, pre)`` (what ``Hook.model_dump()`` gives)."""
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    blob = cloudpickle.dumps(fn)
    return {"fn": {"cloudpickle": base64.b64encode(blob).decode("ascii")}, "layer_indices": list(layers), "pre": pre}
