"""Weight edits: a copy of a model whose residual writers can no longer write along a direction
(orthogonalisation), and that copy written as an ordinary checkpoint any server loads.

Equal in effect to ablating the direction at every writer with hooks
(:func:`emi.interventions.hooks.patch_ablate` with ``layers="all"``), logits to 1e-4, on every
architecture whose writers are all linear in what they write. Qwen4-Exp's PLE short convolution
writes ``silu(conv1d(...))`` into the streams, which no weight edit can keep off a direction once
its weights are non-zero: such models are refused with a sentence (hook ablation works on them).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emi.core.errors import ConfigError
from emi.interventions.vector import LayeredVector, Vector, check_model, project_out, unit_vector
from emi.models import layers as L
from emi.models.layers import HFModel


def _project_out_outputs(w: torch.Tensor, u: torch.Tensor, dim: int) -> None:
    """In place: remove ``u`` from the output dimension ``dim`` (of size d_model) of a weight, in
    float32: W <- (I - u u^T) W along that dimension."""
    moved = w.float().movedim(dim, -1)
    w.copy_(project_out(moved, u.to(w.device, torch.float32)).movedim(-1, dim).to(w.dtype))


def check_orthogonalizable(model: HFModel) -> None:
    """A ConfigError naming the writers a weight edit cannot reach, if the model has any."""
    check_model(model, "orthogonalise")
    blocked = L.unreachable_writers(model)
    if blocked:
        raise ConfigError(
            f"{L.describe(L.unwrap(model))} writes into its residual streams through "
            f"{', '.join(blocked)} (PLE's short convolution, followed by an elementwise SiLU), which no weight edit "
            f"can keep off a direction, so orthogonalised weights would not equal ablation: ablate it with hooks "
            f"(emi.interventions.hooks.ablate, or python -m emi.steer in-process) instead of exporting")


def orthogonalize(model: HFModel, direction: Vector, source_layer: int | None = None) -> HFModel:
    """A copy of ``model`` whose every residual writer can no longer write along the direction.

    The writers are :func:`emi.models.layers.residual_writers`: embedding rows, each layer's attention
    output projection (``o_proj``, or ``out_proj`` on linear-attention layers) and MLP output
    weights (dense ``down_proj``; every routed expert's ``down_proj``, fused or per expert, and the
    shared expert's), Qwen4-Exp's PLE value projection, with their biases; for peft LoRA models
    the adapters' ``lora_B`` of those modules too. Tied embeddings are untied first so the
    unembedding is unchanged. Equal in effect to ``patch_ablate(model, d, layers="all")``.
    """
    check_orthogonalizable(model)
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


def write_ablated(lm: Any, direction: LayeredVector, layer: int, out: Path, provenance: dict[str, Any]) -> bool:
    """Write ``lm`` with ``direction`` (its ``layer`` vector) ablated from its weights to ``out``
    (a new folder, written whole or not at all); True when ``lm`` is a LoRA role, whose edited
    adapter goes to ``out/adapter`` beside the merged full weights."""
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
            "edit": "orthogonalize: the direction removed from every residual writer (emi.interventions.weights.orthogonalize)",
            **provenance, "model": lm.identity(), "direction": direction.summary(), "source_layer": layer,
            "adapter": "adapter/: apply it to the base exported with --role base" if adapter else None})
        if out.is_dir():
            out.rmdir()  # empty (checked by the caller); a folder that filled up meanwhile makes rename fail
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return adapter
