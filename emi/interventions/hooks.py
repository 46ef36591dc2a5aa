"""Interventions on the residual stream: steer (+alpha * d), ablate (project d out), and
orthogonalise weights (a permanent edit of a copy).

Every intervention is an imperative ``patch_*() -> Handle`` plus a context manager that removes
the handle in ``finally``: after a ``with`` block the model is bit-identical in behaviour, even
when the block raised. ``alpha = 0`` is an exact no-op (no hook is installed).

Backends: Hugging Face models (PyTorch forward hooks; the fast path), TransformerLens
(``HookedTransformer`` or ``TransformerBridge``: ``tl_*`` give ``fwd_hooks`` lists for
``model.hooks(...)``), and nnsight (``nnsight_*`` edit envoys inside a trace).

Positions for steering: ``all`` tokens, ``prompt`` tokens only, or ``generated`` tokens only;
they work with KV-cache generation (a pre-hook on the decoder tracks absolute positions). A
teacher-forced pass over prompt + answer (log-prob metrics, side effects) marks where each row's
answer starts with :func:`answer_starts`, so it is steered exactly as generation would steer it.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import nn

from emi.core.errors import ConfigError, DirectionError
from emi.directions.direction import Direction
from emi.models import layers as L
from emi.models.layers import HFModel

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


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.float().norm()
    if not torch.isfinite(n) or n == 0:
        raise DirectionError("the direction vector is zero or not finite")
    return v.float() / n


def check_alpha(alpha: float) -> float:
    if not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ConfigError(f"alpha must be a finite number, found {alpha!r}")
    return float(alpha)


def unit_vector(direction: Direction | Float[torch.Tensor, " d_model"], layer: int | None = None,
                model: HFModel | None = None) -> Float[torch.Tensor, " d_model"]:
    """The unit vector of ``direction`` at ``layer`` (default: its best layer), checked against
    ``model``'s width when given. Every backend's interventions take their vector from here."""
    if isinstance(direction, Direction):
        if model is not None:
            direction.check_fits(L.d_model(model), L.n_layers(model))
        return direction.at(direction.best_layer if layer is None else layer)
    if model is not None and (direction.ndim != 1 or direction.shape[0] != L.d_model(model)):
        raise DirectionError(f"the direction has shape {tuple(direction.shape)} but the model has d_model "
                             f"{L.d_model(model)}")
    return _unit(direction)


def steer_delta(direction: Direction | Float[torch.Tensor, " d_model"], layer: int, alpha: float,
                relative: bool = False, model: HFModel | None = None) -> Float[torch.Tensor, " d_model"]:
    """What steering adds at ``layer``: alpha times the unit direction (times the layer's residual
    norm when ``relative``)."""
    if relative and not isinstance(direction, Direction):
        raise ConfigError("relative alpha needs a Direction artifact (it carries the residual norms)")
    scale = alpha * (direction.norm_at(layer) if relative else 1.0)  # type: ignore[union-attr]
    return scale * unit_vector(direction, layer, model)


def project_out(x: Float[torch.Tensor, "*batch d_model"], u: Float[torch.Tensor, " d_model"], target: float = 0.0
                ) -> Float[torch.Tensor, "*batch d_model"]:
    """``x`` with its component along the unit vector ``u`` set to ``target`` (0: removed). The one
    projection behind every ablation: the HF hooks, TransformerLens, nnsight, and (applied to the
    output dimension of a residual writer's weight) orthogonalisation."""
    return x - ((x @ u) - target)[..., None] * u


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


def patch_steer(model: HFModel, direction: Direction | torch.Tensor, alpha: float,
                layers: Sequence[int] | str | int | None = None, positions: str = "all",
                relative: bool = False) -> Handle:
    """Add ``alpha`` times the unit direction to the residual stream after each chosen block.

    ``relative``: alpha is a fraction of the typical residual norm at that layer (from the
    direction artifact). ``layers`` defaults to the direction's best layer.
    """
    alpha = check_alpha(alpha)
    if positions not in STEER_POSITIONS:
        raise ConfigError(f"unknown positions {positions!r}; expected one of {', '.join(STEER_POSITIONS)}")
    n = L.n_layers(model)
    if layers is None:
        if not isinstance(direction, Direction):
            raise ConfigError("give layers= when steering with a bare vector")
        layers = [direction.best_layer]
    layer_list = L.resolve_layers(layers, n)
    handle = Handle()
    if alpha == 0:
        return handle  # exact no-op
    tracker = _Positions(model) if positions != "all" else None
    if tracker is not None:
        handle.handles.append(tracker)
    for layer in layer_list:
        module = L.hf_module(model, layer, "resid")
        p = next(module.parameters())
        delta = steer_delta(direction, layer, alpha, relative, model).to(device=p.device, dtype=p.dtype)

        def hook(_m: nn.Module, _i: Any, out: Any, delta: torch.Tensor = delta) -> Any:
            h = L.output_tensor(out)
            if tracker is None:
                return L.replace_output(out, h + delta)
            m = tracker.mask(h.shape[1], positions, h.device)
            if m is None:
                return L.replace_output(out, h + delta)
            m = m[None, :, None] if m.dim() == 1 else m[:, :, None]
            return L.replace_output(out, h + m.to(h.dtype) * delta)

        handle.handles.append(module.register_forward_hook(hook))
    return handle


def _ablation_modules(model: HFModel, layers: Sequence[int] | None) -> list[nn.Module]:
    """Every writer to the residual stream (embedding, attention and MLP outputs) for all layers;
    the block outputs of the chosen layers otherwise."""
    if layers is None:
        inner = L.unwrap(model).model
        mods: list[nn.Module] = [inner.embed_tokens]
        for layer in range(L.n_layers(model)):
            mods += [L.hf_module(model, layer, "attn"), L.hf_module(model, layer, "mlp")]
        return mods
    return [L.hf_module(model, layer, "resid") for layer in layers]


def patch_ablate(model: HFModel, direction: Direction | torch.Tensor, layers: Sequence[int] | str | None = "all",
                 source_layer: int | None = None, mean: float | None = None) -> Handle:
    """Project one unit direction out of the residual stream.

    ``layers="all"`` removes it from every writer (embedding, attention and MLP outputs), so the
    stream carries none of it anywhere: equal to :func:`orthogonalize`. Chosen layers project it
    out of those blocks' outputs. ``mean``: set the projection to this value instead of zero
    (mean ablation). ``source_layer``: which layer's vector of a Direction (default: its best).
    """
    v = unit_vector(direction, source_layer, model)
    if mean is not None and not math.isfinite(mean):
        raise ConfigError(f"the mean projection must be finite, found {mean}")
    layer_list = None if layers in ("all", None) else L.resolve_layers(layers, L.n_layers(model))  # type: ignore[arg-type]
    if mean is not None and layer_list is None:
        raise ConfigError("mean ablation sets the projection at chosen layers' outputs; pass layers=[...]")
    handle = Handle()
    for module in _ablation_modules(model, layer_list):
        p = next(module.parameters())
        u = v.to(device=p.device, dtype=p.dtype)
        target = 0.0 if mean is None or layer_list is None else mean

        def hook(_m: nn.Module, _i: Any, out: Any, u: torch.Tensor = u, target: float = target) -> Any:
            return L.replace_output(out, project_out(L.output_tensor(out), u, target))

        handle.handles.append(module.register_forward_hook(hook))
    return handle


@contextlib.contextmanager
def steer(model: HFModel, direction: Direction | torch.Tensor, alpha: float, **kw: Any) -> Iterator[Handle]:
    """``with steer(model, d, alpha=8, layers=[2]): ...`` (see :func:`patch_steer`)."""
    h = patch_steer(model, direction, alpha, **kw)
    try:
        yield h
    finally:
        h.remove()


@contextlib.contextmanager
def ablate(model: HFModel, direction: Direction | torch.Tensor, **kw: Any) -> Iterator[Handle]:
    """``with ablate(model, d): ...`` (see :func:`patch_ablate`)."""
    h = patch_ablate(model, direction, **kw)
    try:
        yield h
    finally:
        h.remove()


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield None


# ---------------------------------------------------------------- weight orthogonalisation

def _project_out_outputs(w: torch.Tensor, u: torch.Tensor, dim: int) -> None:
    """In place: remove ``u`` from the output dimension ``dim`` (of size d_model) of a weight, in
    float32: W <- (I - u u^T) W along that dimension."""
    moved = w.float().movedim(dim, -1)
    w.copy_(project_out(moved, u.to(w.device, torch.float32)).movedim(-1, dim).to(w.dtype))


def orthogonalize(model: HFModel, direction: Direction | torch.Tensor, source_layer: int | None = None) -> HFModel:
    """A copy of ``model`` whose every residual writer can no longer write along the direction.

    The writers are :func:`emi.models.layers.residual_writers`: embedding rows, each layer's attention
    output projection (``o_proj``, or ``out_proj`` on linear-attention layers) and MLP output
    weights (dense ``down_proj``; every routed expert's ``down_proj``, fused or per expert, and the
    shared expert's), with their biases; for peft LoRA models the adapters' ``lora_B`` of those
    modules too. Tied embeddings are untied first so the unembedding is unchanged. Equal in effect
    to ``patch_ablate(model, d, layers="all")``.
    """
    v = unit_vector(direction, source_layer, model)
    edited = copy.deepcopy(model)
    inner = L.unwrap(edited)
    with torch.no_grad():
        emb = inner.model.embed_tokens
        head = inner.get_output_embeddings()
        if head is not None and head.weight is emb.weight:  # untie: the unembedding keeps its weights
            head.weight = nn.Parameter(emb.weight.detach().clone())
            inner.config.tie_word_embeddings = False
            if hasattr(inner, "_tied_weights_keys"):
                inner._tied_weights_keys = None
        for _name, writer in L.residual_writers(edited):
            _orthogonalize_writer(writer, v)
    return edited


def _orthogonalize_writer(writer: nn.Module | nn.Parameter, v: torch.Tensor) -> None:
    """In place: remove ``v`` from what one residual writer can output."""
    if isinstance(writer, nn.Parameter):  # fused experts [experts, d_model, d_expert]
        _project_out_outputs(writer.data, v, dim=1)
        return
    if isinstance(writer, nn.Embedding):  # [vocab, d_model]
        _project_out_outputs(writer.weight.data, v, dim=1)
        return
    base: Any = getattr(writer, "base_layer", writer)  # nn.Linear: [d_model, d_in]
    _project_out_outputs(base.weight.data, v, dim=0)
    if base.bias is not None:
        _project_out_outputs(base.bias.data, v, dim=0)
    for b in getattr(writer, "lora_B", {}).values():  # peft: out = W x + B A x * s
        _project_out_outputs(b.weight.data, v, dim=0)


def write_ablated(lm: Any, direction: Direction, layer: int, out: Path, provenance: dict[str, Any]) -> bool:
    """Write ``lm`` with ``direction`` (its ``layer`` vector) ablated from its weights to ``out``
    (a new folder, written whole or not at all); True when ``lm`` is a LoRA role, whose edited
    adapter goes to ``out/adapter`` beside the merged full weights."""
    import shutil
    import tempfile

    from emi.core.atomic import write_json

    with lm.active() as model:
        edited = orthogonalize(model, direction, source_layer=layer)
    peft = hasattr(edited, "peft_config")
    adapter = peft and lm.adapter_enabled is not False
    out.parent.mkdir(parents=True, exist_ok=True)
    # written into a temporary sibling and renamed at the end: never a half-written export
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if adapter:
            for name in [n for n in edited.peft_config if n != edited.active_adapter]:
                edited.delete_adapter(name)  # other roles' adapters on a shared base are not this model
            edited.save_pretrained(tmp / "adapter")
            full = edited.merge_and_unload()
        else:
            full = edited.unload() if peft else L.unwrap(edited)  # a LoRA pair's base: its own weights
        full.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        write_json(tmp / "export.json", {
            "edit": "orthogonalize: the direction removed from every residual writer (emi.interventions.hooks.orthogonalize)",
            **provenance, "model": lm.identity(), "direction": direction.summary(), "source_layer": layer,
            "adapter": "adapter/: apply it to the base exported with --role base" if adapter else None})
        if out.is_dir():
            out.rmdir()  # empty (checked by the caller); a folder that filled up meanwhile makes rename fail
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return adapter



# ---------------------------------------------------------------- TransformerLens

def tl_steer_hooks(direction: Direction | torch.Tensor, alpha: float, layers: Sequence[int],
                   relative: bool = False) -> list[tuple[str, Any]]:
    """``fwd_hooks`` for ``tl_model.hooks(fwd_hooks=...)``: add alpha * d at ``blocks.l.hook_resid_post``."""
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


def tl_ablate_hooks(direction: Direction | torch.Tensor, n_layers: int, source_layer: int | None = None,
                    linear_layers: Sequence[int] = ()) -> list[tuple[str, Any]]:
    """``fwd_hooks`` projecting the direction out of every writer (embedding, attn and MLP outputs).
    ``linear_layers``: layers whose mixer is linear attention (``emi.models.layers.linear_layers(hf_model)``)."""
    v = unit_vector(direction, source_layer)

    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return project_out(act, v.to(act.device, act.dtype))

    lin = set(linear_layers)
    names = ["hook_embed"] + [L.tl_hook_name(layer, s, layer in lin) for layer in range(n_layers)
                              for s in ("attn", "mlp")]
    return [(n, fn) for n in names]


# ---------------------------------------------------------------- nnsight

def nnsight_steer(nn_model: Any, direction: Direction | torch.Tensor, alpha: float, layers: Sequence[int],
                  relative: bool = False) -> None:
    """Inside ``with nn_model.trace(...)``: add alpha * d to ``model.layers[l].output``."""
    alpha = check_alpha(alpha)
    if alpha == 0:
        return
    for layer in sorted(layers):
        env = L.nnsight_envoy(nn_model, layer, "resid")
        env.output = env.output + steer_delta(direction, layer, alpha, relative).to(env.output.dtype)


def nnsight_ablate(nn_model: Any, direction: Direction | torch.Tensor, n_layers: int,
                   source_layer: int | None = None) -> None:
    """Inside a trace: project the direction out of the embedding and every attn and MLP output."""
    v = unit_vector(direction, source_layer)
    emb = nn_model.model.embed_tokens
    emb.output = project_out(emb.output, v)
    for layer in range(n_layers):
        attn = L.nnsight_envoy(nn_model, layer, "attn")
        if L.is_tuple_output(nn_model, layer, "attn"):
            attn.output = (project_out(attn.output[0], v), *attn.output[1:])
        else:  # linear attention returns the tensor itself
            attn.output = project_out(attn.output, v)
        mlp = L.nnsight_envoy(nn_model, layer, "mlp")
        mlp.output = project_out(mlp.output, v)
