"""The one module that knows library-specific module paths.

Layer convention (used everywhere in emi, its stores, its directions and its CLIs):

    layer l  (0 <= l < n_layers)  =  the residual stream *after* decoder block l.

| emi                  | Hugging Face                               | TransformerLens                 | nnsight                          |
|----------------------|--------------------------------------------|---------------------------------|----------------------------------|
| resid, layer l       | output of ``model.model.layers[l]``        | ``blocks.{l}.hook_resid_post``  | ``model.model.layers[l].output`` |
|                      | = ``output_hidden_states[l + 1]`` (l < L-1)|                                 |                                  |
| attn, layer l        | output of ``model.model.layers[l].self_attn`` (after o_proj) | ``blocks.{l}.hook_attn_out`` | ``...layers[l].self_attn.output[0]`` |
| mlp, layer l         | output of ``model.model.layers[l].mlp``    | ``blocks.{l}.hook_mlp_out``     | ``...layers[l].mlp.output``      |

``hidden_states[0]`` is the embedding output, and the last entry of ``output_hidden_states``
is taken *after* the final norm, so it is not the raw residual of the last layer: emi always
reads the residual with a hook on the decoder block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from emi.errors import ConfigError

SITES = ("resid", "attn", "mlp")
# A Hugging Face causal LM (or a peft wrapper of one). Typed as Any: transformers models expose their
# submodules and config as dynamic attributes that nn.Module's typing cannot see.
HFModel = Any


def unwrap(model: HFModel) -> HFModel:
    """The causal-LM module under peft or other wrappers (the one with ``.model.layers``)."""
    if hasattr(model, "get_base_model"):  # peft: the causal LM with the adapters injected
        model = model.get_base_model()
    seen = 0
    while not hasattr(getattr(model, "model", None), "layers") and seen < 4:
        inner = getattr(model, "base_model", None) or getattr(model, "model", None)
        if inner is None or inner is model:
            break
        model, seen = inner, seen + 1
    if not hasattr(getattr(model, "model", None), "layers"):
        raise ConfigError(
            f"expected a decoder-only causal LM with `.model.layers` (a Qwen2-style model), "
            f"found {type(model).__name__}; pass the Hugging Face model, not a pipeline or wrapper"
        )
    return model


def decoder_layers(model: HFModel) -> nn.ModuleList:
    return unwrap(model).model.layers


def n_layers(model: HFModel) -> int:
    return len(decoder_layers(model))


def d_model(model: HFModel) -> int:
    return int(unwrap(model).config.hidden_size)


def resolve_layers(spec: str | int | Sequence[int] | None, total: int) -> list[int]:
    """Turn a user's layer request into sorted layer indices; negatives count from the end.

    Accepts ``"all"``, ``None`` (all), an int, a list, or strings like ``"0,2,5"``,
    ``"4-8"`` and ``"-1"``.
    """
    if spec is None or spec == "all":
        return list(range(total))
    items: list[int] = []
    if isinstance(spec, int):
        items = [spec]
    elif isinstance(spec, str):
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                try:
                    items.extend(range(int(lo), int(hi) + 1))
                except ValueError:
                    raise ConfigError(f"layer range {part!r} is not of the form 'A-B'") from None
            else:
                try:
                    items.append(int(part))
                except ValueError:
                    raise ConfigError(
                        f"layer {part!r} is not an integer; use e.g. 'all', '3', '0,2,5' or '4-8'"
                    ) from None
    else:
        items = [int(x) for x in spec]
    out = []
    for layer in items:
        idx = layer + total if layer < 0 else layer
        if not 0 <= idx < total:
            raise ConfigError(
                f"layer {layer} is out of range: this model has {total} layers (0..{total - 1}, "
                f"or -1..-{total} from the end)"
            )
        out.append(idx)
    if not out:
        raise ConfigError("no layers were given; use e.g. 'all' or '3'")
    return sorted(set(out))


def check_site(site: str) -> str:
    if site not in SITES:
        raise ConfigError(f"unknown site {site!r}; expected one of {', '.join(SITES)}")
    return site


def hf_module(model: HFModel, layer: int, site: str = "resid") -> nn.Module:
    """The Hugging Face module whose forward output is ``site`` at ``layer``."""
    block: Any = decoder_layers(model)[layer]
    module: nn.Module = {"resid": block, "attn": block.self_attn, "mlp": block.mlp}[check_site(site)]
    return module


def tl_hook_name(layer: int, site: str = "resid") -> str:
    """TransformerLens hook point for ``site`` at ``layer`` (HookedTransformer and TransformerBridge)."""
    suffix = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}
    return f"blocks.{layer}.{suffix[check_site(site)]}"


def nnsight_envoy(nn_model, layer: int, site: str = "resid"):  # noqa: ANN001 (nnsight Envoy)
    """The nnsight envoy whose ``.output`` is ``site`` at ``layer`` (``.output[0]`` for attn)."""
    block = nn_model.model.layers[layer]
    return {"resid": block, "attn": block.self_attn, "mlp": block.mlp}[check_site(site)]


def output_tensor(output: object) -> torch.Tensor:
    """The hidden-state tensor of a module output: Qwen2 decoder layers return a bare tensor in
    current transformers and a tuple in older ones; attention returns (out, weights)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find the hidden-state tensor in a module output of type {type(output)}")


def replace_output(output: object, new: torch.Tensor) -> object:
    """``output`` with its hidden-state tensor replaced by ``new`` (same container form)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    raise TypeError(f"cannot replace the hidden state in a module output of type {type(output)}")


def tl_bridge(model: HFModel, tokenizer, copy_model: bool = False):  # noqa: ANN001, ANN201
    """A TransformerLens ``TransformerBridge`` over an in-memory HF model, built offline.

    The bridge rewires the HF model's submodules in place (no weight copy; emi's HF hooks keep
    working on it) and sets a BOS token on the tokenizer it is given, so it gets a copy of the
    tokenizer; ``copy_model=True`` also leaves ``model`` untouched, at the cost of a second copy.
    """
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    name = getattr(getattr(model, "config", None), "name_or_path", "") or "local"
    hf = copy.deepcopy(model) if copy_model else model
    return TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=copy.deepcopy(tokenizer))


def nnsight_model(model: HFModel, tokenizer):  # noqa: ANN001, ANN201
    """An nnsight ``TransformersModel`` over an in-memory HF model (no hub access)."""
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(unwrap(model), tokenizer=tokenizer)


def hooked_transformer(model: HFModel, tokenizer, n_ctx: int = 2048):  # noqa: ANN001, ANN201
    """A legacy TransformerLens ``HookedTransformer`` built offline from an in-memory Qwen2 model.

    ``HookedTransformer.from_pretrained`` fetches the config from the hub even when given the
    model, so the config is built here from the HF config, the weights converted with TL's own
    ``convert_qwen2_weights``, and loaded *without* TL's default weight processing (folding
    layer norms, centring), so its residual stream equals the HF model's. It holds a second copy
    of the weights.
    """
    import copy

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.qwen2 import convert_qwen2_weights

    hf = unwrap(model)
    c = hf.config
    if c.model_type != "qwen2":
        raise ConfigError(f"hooked_transformer builds Qwen2 models offline; this model is {c.model_type!r}")
    theta = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    dtype = next(hf.parameters()).dtype
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers,
        n_ctx=min(n_ctx, c.max_position_embeddings), eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn=c.hidden_act,
        use_attn_scale=True, normalization_type="RMS", positional_embedding_type="rotary", rotary_base=int(theta),
        rotary_adjacent_pairs=False, rotary_dim=c.hidden_size // c.num_attention_heads, final_rms=True,
        gated_mlp=True, default_prepend_bos=False, tokenizer_prepends_bos=False,
        original_architecture="Qwen2ForCausalLM", dtype=dtype, device=str(next(hf.parameters()).device))
    tl = HookedTransformer(cfg, tokenizer=copy.deepcopy(tokenizer), move_to_device=False)
    tl.load_and_process_state_dict(convert_qwen2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False)
    return tl.eval()
