"""nnsight backend: edits of envoys inside ``with nn_model.trace(...)`` on an nnsight
``TransformersModel`` (:func:`emi.models.layers.nnsight_model`), sharing the vector and
projection of :mod:`emi.interventions.vector`; on a model with several residual streams
(Qwen4-Exp) they act on every stream, as the HF hooks do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emi.interventions.vector import (
    Vector,
    check_alpha,
    check_model,
    project_out,
    project_out_streams,
    steer_delta,
    unit_vector,
)
from emi.models import layers as L


def nnsight_steer(nn_model: Any, direction: Vector, alpha: float, layers: Sequence[int],
                  relative: bool = False) -> None:
    """Inside ``with nn_model.trace(...)``: add alpha * d to ``model.layers[l].output`` (every stream)."""
    hf = nn_model._module
    check_model(hf, "steer")
    alpha = check_alpha(alpha)
    if alpha == 0:
        return
    n = L.n_streams(hf)
    for layer in sorted(layers):
        env = L.nnsight_envoy(nn_model, layer, "resid")
        delta = steer_delta(direction, layer, alpha, relative, hf)
        env.output = L.add_to_streams(env.output, delta.to(env.output.dtype), n)


def nnsight_ablate(nn_model: Any, direction: Vector, n_layers: int, source_layer: int | None = None) -> None:
    """Inside a trace: project the direction out of the embedding, every PLE, and every attn and
    MLP output, in execution order."""
    hf = nn_model._module
    check_model(hf, "ablate")
    v = unit_vector(direction, source_layer, hf)
    n = L.n_streams(hf)
    emb = nn_model.model.embed_tokens
    emb.output = project_out(emb.output, v)
    ple = set(L.ple_layers(hf))
    for layer in range(n_layers):
        if layer in ple:
            env = nn_model.model.layers[layer].ple
            env.output = project_out_streams(env.output, v, n)
        attn = L.nnsight_envoy(nn_model, layer, "attn")
        if L.is_tuple_output(nn_model, layer, "attn"):
            attn.output = (project_out(attn.output[0], v), *attn.output[1:])
        else:  # linear attention returns the tensor itself
            attn.output = project_out(attn.output, v)
        mlp = L.nnsight_envoy(nn_model, layer, "mlp")
        mlp.output = project_out(mlp.output, v)
