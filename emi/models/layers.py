"""The one module that knows library-specific module paths.

Layer convention (used everywhere in emi, its stores, its directions and its CLIs):

    layer l  (0 <= l < n_layers)  =  the residual stream *after* decoder block l.

| emi                  | Hugging Face                               | TransformerLens                 | nnsight                          |
|----------------------|--------------------------------------------|---------------------------------|----------------------------------|
| resid, layer l       | output of ``model.model.layers[l]``        | ``blocks.{l}.hook_resid_post``  | ``model.model.layers[l].output`` |
|                      | = ``output_hidden_states[l + 1]`` (l < L-1)|                                 |                                  |
| attn, layer l        | output of the block's token mixer: ``self_attn`` (after o_proj), or ``linear_attn`` (after out_proj) on Qwen3.5 / Qwen3-Next linear-attention layers | ``blocks.{l}.hook_attn_out`` (``blocks.{l}.linear_attn.hook_out`` on linear layers) | ``...layers[l].self_attn.output[0]`` / ``...layers[l].linear_attn.output`` |
| mlp, layer l         | output of ``model.model.layers[l].mlp``: the dense MLP, or the whole sparse MoE block (routed experts plus the gated shared expert) | ``blocks.{l}.hook_mlp_out``     | ``...layers[l].mlp.output``      |

``hidden_states[0]`` is the embedding output, and the last entry of ``output_hidden_states``
is taken *after* the final norm, so it is not the raw residual of the last layer: emi always
reads the residual with a hook on the decoder block.

Architectures (``ARCHITECTURES``): every Qwen causal LM in the pinned transformers. The residual
writers that ablation hooks and :func:`residual_writers` (weight orthogonalisation) edit are the
token embedding, each layer's attention output projection (``self_attn.o_proj``, or
``linear_attn.out_proj``), and each layer's MLP output: ``mlp.down_proj`` (dense), or for a
sparse MoE block every routed expert's ``down_proj`` (fused ``experts.down_proj`` of shape
[experts, d_model, d_expert]) and the shared expert's ``down_proj``.

Several residual streams (Qwen4-Exp, ``HYPER_CONNECTIONS``): a decoder layer outputs ``hc_count``
streams of d_model, [batch, pos, hc * d_model]. ``resid`` is their mean (:func:`resid_view`),
``resid_streams`` every stream (:func:`streams`, [batch, pos, hc, d_model]); steering adds to every
stream (:func:`add_to_streams`); the residual writers add each PLE (hashed n-gram embeddings
written into every stream before the block: :func:`hook_writers` for hooks, its ``value_proj``
for weight edits, and :func:`unreachable_writers` names its short convolution, which no weight
edit reaches once non-zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import nn

from emi.core.errors import ConfigError

SITES = ("resid", "attn", "mlp")
# sites a reader can capture beyond SITES: every residual stream of a hyper-connection model, [batch, pos, hc, d_model]
READ_SITES = (*SITES, "resid_streams")
# model_type -> what users call it. Each was built at small shapes with random weights and tested
# through capture, steering, ablation and orthogonalisation (tests/interventions/test_architectures.py).
ARCHITECTURES = {
    "qwen2": "Qwen2 / Qwen2.5 / Qwen2.5-Coder",
    "qwen2_moe": "Qwen1.5-MoE / Qwen2-MoE (routed + shared experts)",
    "qwen3": "Qwen3 (dense)",
    "qwen3_moe": "Qwen3-MoE (routed experts)",
    "qwen3_5": "Qwen3.5 (linear- and full-attention layers)",
    "qwen3_5_text": "Qwen3.5 (linear- and full-attention layers)",
    "qwen3_5_moe": "Qwen3.5-MoE (hybrid attention, routed + shared experts)",
    "qwen3_5_moe_text": "Qwen3.5-MoE (hybrid attention, routed + shared experts)",
    "qwen3_next": "Qwen3-Next (hybrid attention, routed + shared experts)",
    "qwen4_exp": "Qwen4-Exp / Qwen3.8 (hyper-connections: several residual streams; PLE; QSA)",
    "qwen4_exp_text": "Qwen4-Exp / Qwen3.8 (hyper-connections: several residual streams; PLE; QSA)",
}
# model types with several residual streams (hyper-connections: config.hc_count streams of d_model)
HYPER_CONNECTIONS = ("qwen4_exp", "qwen4_exp_text")
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


def model_type(model_or_config: Any) -> str:
    cfg = getattr(model_or_config, "config", model_or_config)
    return str(getattr(cfg, "model_type", "?"))


def check_architecture(model_or_config: Any, what: str = "the model") -> str:
    """The model type, or a ConfigError naming it and the architectures emi intervenes on."""
    mt = model_type(model_or_config)
    if mt not in ARCHITECTURES:
        known = ", ".join(sorted({k.removesuffix("_text") for k in ARCHITECTURES}))
        kind = describe(model_or_config)
        raise ConfigError(f"{what} is {kind}, whose module paths emi does not know: emi captures, steers and "
                          f"ablates {known} models (python -m emi.evaluate runs any causal LM); pass one of those, "
                          f"or add the architecture's module paths to emi.models.layers")
    return mt


def check_causal_lm(config: Any, what: str = "the model") -> str:
    """The model type, or a ConfigError when transformers has no causal LM for it (what sampling needs)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    mt = model_type(config)
    if mt not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"{what} is {describe(config)}, which is not a causal language model in transformers "
                          f"(AutoModelForCausalLM has no class for it): pass a checkpoint that generates text")
    return mt


def describe(model_or_config: Any) -> str:
    """What a model is, in words: ``a 'llama' model (LlamaForCausalLM)``."""
    cfg = getattr(model_or_config, "config", model_or_config)
    archs = getattr(cfg, "architectures", None)
    arch = archs[0] if archs else (type(model_or_config).__name__ if cfg is not model_or_config else None)
    return f"a {model_type(cfg)!r} model" + (f" ({arch})" if arch else "")


def n_streams(model_or_config: Any) -> int:
    """How many residual streams the model carries: ``hc_count`` for hyper-connection models
    (Qwen4-Exp), 1 for every other architecture."""
    if isinstance(model_or_config, nn.Module):
        cfg = unwrap(model_or_config).config
    else:
        cfg = getattr(model_or_config, "config", model_or_config)
    if model_type(cfg) not in HYPER_CONNECTIONS:
        return 1
    return int(getattr(cfg, "text_config", cfg).hc_count)


def streams(h: Float[torch.Tensor, "*b p sd"], n: int) -> Float[torch.Tensor, "*b p s d"]:
    """A block output of a hyper-connection model, [..., hc * d_model], as its streams [..., hc, d_model]."""
    return einops.rearrange(h, "... p (s d) -> ... p s d", s=n)


def resid_view(h: Float[torch.Tensor, "*b p sd"], n: int) -> Float[torch.Tensor, "*b p d"]:
    """emi's ``resid`` of a block output: the mean over the ``n`` residual streams (the tensor itself
    when ``n == 1``). Adding ``x`` to every stream adds exactly ``x`` to it."""
    return h if n == 1 else einops.reduce(h, "... p (s d) -> ... p d", "mean", s=n)


def add_to_streams(h: Float[torch.Tensor, "*b p sd"], x: Float[torch.Tensor, "*b p d"], n: int
                   ) -> Float[torch.Tensor, "*b p sd"]:
    """``h`` with ``x`` (d_model wide, broadcast over batch and positions) added to every one of its ``n`` streams."""
    if n == 1:
        return h + x
    return h + einops.repeat(x, "... d -> ... (s d)", s=n)


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
                    a, b = int(lo), int(hi)
                except ValueError:
                    raise ConfigError(f"layer range {part!r} is not of the form 'A-B'") from None
                if b < a:
                    raise ConfigError(f"layer range {part!r} is empty (it ends before it starts); write it "
                                      f"as '{b}-{a}'")
                items.extend(range(a, b + 1))
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


def check_site(site: str, sites: Sequence[str] = SITES) -> str:
    if site == "resid_streams" and site not in sites:
        raise ConfigError("an activation store holds d_model-wide sites (resid, attn, mlp; resid is the mean over a "
                          "model's residual streams); read every stream with emi.activations.readers.hf_reader(model, "
                          "layers, ('resid_streams',)) instead")
    if site not in sites:
        raise ConfigError(f"unknown site {site!r}; expected one of {', '.join(sites)}")
    return site


def site_tensor(out: object, site: str, n: int) -> torch.Tensor:
    """What a reader records for ``site`` from its module's output (``n``: the model's streams):
    ``resid`` is d_model wide (the mean over streams), ``resid_streams`` is [batch, pos, hc, d_model]."""
    h = output_tensor(out)
    if site == "resid":
        return resid_view(h, n)
    if site == "resid_streams":
        return streams(h, n)
    return h


def mixer_name(block: Any) -> str:
    """The block's token mixer: ``self_attn`` (softmax attention) or ``linear_attn`` (Gated DeltaNet
    layers of Qwen3.5 and Qwen3-Next)."""
    for name in ("self_attn", "linear_attn"):
        if isinstance(getattr(block, name, None), nn.Module):
            return name
    raise ConfigError(f"decoder block {type(block).__name__} has neither self_attn nor linear_attn; "
                      f"emi.models.layers does not know this architecture")


def linear_layers(model: HFModel) -> list[int]:
    """Layers whose token mixer is linear attention (empty for Qwen2, Qwen3 and their MoEs)."""
    return [i for i, b in enumerate(decoder_layers(model)) if mixer_name(b) == "linear_attn"]


def hf_module(model: HFModel, layer: int, site: str = "resid") -> nn.Module:
    """The Hugging Face module whose forward output is ``site`` at ``layer``."""
    block: Any = decoder_layers(model)[layer]
    site = check_site(site, READ_SITES)
    if site in ("resid", "resid_streams"):
        return block
    module: nn.Module = getattr(block, mixer_name(block)) if site == "attn" else block.mlp
    return module


def tl_hook_name(layer: int, site: str = "resid", linear: bool = False) -> str:
    """TransformerLens hook point for ``site`` at ``layer`` (HookedTransformer and TransformerBridge);
    ``linear``: the layer's mixer is linear attention, whose bridge hook is ``linear_attn.hook_out``."""
    if check_site(site) == "attn" and linear:
        return f"blocks.{layer}.linear_attn.hook_out"
    suffix = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}
    return f"blocks.{layer}.{suffix[site]}"


def nnsight_envoy(nn_model, layer: int, site: str = "resid"):  # noqa: ANN001 (nnsight Envoy)
    """The nnsight envoy whose ``.output`` is ``site`` at ``layer`` (see :func:`nnsight_output`)."""
    block = nn_model.model.layers[layer]
    site = check_site(site, READ_SITES)
    if site in ("resid", "resid_streams"):
        return block
    if site == "mlp":
        return block.mlp
    return getattr(block, mixer_name(decoder_layers(nn_model._module)[layer]))


def is_tuple_output(nn_model, layer: int, site: str) -> bool:  # noqa: ANN001
    """Whether ``site``'s module returns a tuple whose first item is the hidden state (softmax
    attention returns (output, weights); linear attention, MLPs and blocks a tensor)."""
    return site == "attn" and mixer_name(decoder_layers(nn_model._module)[layer]) == "self_attn"


def ple_layers(model: HFModel) -> list[int]:
    """Layers with a Per-Layer Embedding (Qwen4-Exp's hashed n-gram embeddings, written into every
    stream before the block reads them); 0-based, where the config's ``ple_layer_ids`` are 1-based."""
    return [i for i, b in enumerate(decoder_layers(model)) if isinstance(getattr(b, "ple", None), nn.Module)]


def hook_writers(model: HFModel) -> list[tuple[str, nn.Module, int]]:
    """Every module whose output is added to the residual stream(s), with the number of streams its
    output spans: the token embedding (copied into every stream), per layer the PLE (one slice per
    stream), the token mixer and the MLP (one d_model vector, which the block writes into every
    stream with its learned weights). Projecting a direction out of each leaves none of it in any stream."""
    inner = unwrap(model)
    n = n_streams(model)
    out: list[tuple[str, nn.Module, int]] = [("model.embed_tokens", inner.model.embed_tokens, 1)]
    block: Any
    for i, block in enumerate(decoder_layers(model)):
        if isinstance(getattr(block, "ple", None), nn.Module):
            out.append((f"layers.{i}.ple", block.ple, n))
        out.append((f"layers.{i}.{mixer_name(block)}", getattr(block, mixer_name(block)), 1))
        out.append((f"layers.{i}.mlp", block.mlp, 1))
    return out


def unreachable_writers(model: HFModel) -> list[str]:
    """Residual writers that no weight edit can keep off a direction: Qwen4-Exp's PLE short
    convolution, whose output passes an elementwise SiLU (``silu(conv1d(...))``), once its weights
    are non-zero (they start at zero)."""
    blocks: Any = decoder_layers(model)
    return [f"layers.{i}.ple.conv1d" for i in ple_layers(model) if bool(blocks[i].ple.conv1d.weight.detach().ne(0).any())]


def residual_writers(model: HFModel) -> list[tuple[str, nn.Module | nn.Parameter]]:
    """Every weight that writes into the residual stream, with its name: the token embedding,
    then per layer the mixer's output projection and the MLP's output weights (dense
    ``down_proj``; for sparse MoE blocks each expert's ``down_proj``, fused or not, and the shared
    expert's). Linear modules write along their rows; a fused expert parameter is
    [experts, d_model, d_expert]."""
    inner = unwrap(model)
    out: list[tuple[str, nn.Module | nn.Parameter]] = [("model.embed_tokens", inner.model.embed_tokens)]
    block: Any
    for i, block in enumerate(decoder_layers(model)):
        if isinstance(getattr(block, "ple", None), nn.Module):  # PLE's value, gated into every stream
            out.append((f"layers.{i}.ple.value_proj", block.ple.value_proj))
        mixer = mixer_name(block)
        proj = "o_proj" if mixer == "self_attn" else "out_proj"
        out.append((f"layers.{i}.{mixer}.{proj}", getattr(getattr(block, mixer), proj)))
        mlp: Any = block.mlp
        if hasattr(mlp, "down_proj"):
            out.append((f"layers.{i}.mlp.down_proj", mlp.down_proj))
            continue
        experts = getattr(mlp, "experts", None)
        if experts is None:
            raise ConfigError(f"layer {i}'s MLP ({type(mlp).__name__}) has neither down_proj nor experts; "
                              f"emi.models.layers does not know this architecture")
        fused = getattr(experts, "down_proj", None)
        if isinstance(fused, nn.Parameter):
            out.append((f"layers.{i}.mlp.experts.down_proj", fused))
        else:  # one module per expert
            out += [(f"layers.{i}.mlp.experts.{e}.down_proj", ex.down_proj) for e, ex in enumerate(experts)]
        shared = getattr(mlp, "shared_expert", None)
        if shared is not None:
            out.append((f"layers.{i}.mlp.shared_expert.down_proj", shared.down_proj))
    return out


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

    if n_streams(model) > 1:
        raise ConfigError(f"TransformerLens's TransformerBridge has no adapter for {describe(unwrap(model))}, a "
                          f"model with {n_streams(model)} residual streams: capture, steer and ablate it with emi's "
                          f"Hugging Face hooks (emi.interventions.hooks) or nnsight (emi.models.layers.nnsight_model)")
    name = getattr(getattr(model, "config", None), "name_or_path", "") or "local"
    hf = copy.deepcopy(model) if copy_model else model
    cfg = unwrap(hf).config
    if not getattr(cfg, "architectures", None):  # models built in memory: the bridge picks its adapter by this
        cfg.architectures = [type(unwrap(hf)).__name__]
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
    from importlib.metadata import version

    hf = unwrap(model)
    c = hf.config
    if n_streams(hf) > 1:
        raise ConfigError(f"the legacy HookedTransformer is built offline for Qwen2 models only, and TransformerLens "
                          f"has no bridge for {c.model_type!r} (several residual streams): use emi's Hugging Face hooks "
                          f"(emi.interventions.hooks) or nnsight (emi.models.layers.nnsight_model)")
    if c.model_type != "qwen2":
        raise ConfigError(f"the legacy HookedTransformer is built offline for Qwen2 models only; this model is "
                          f"{c.model_type!r}: use emi.models.layers.tl_bridge (TransformerLens's TransformerBridge "
                          f"supports it) or nnsight_model")
    tl_version = version("transformer-lens")
    if int(tl_version.split(".")[0]) >= 4:
        raise ConfigError(f"TransformerLens {tl_version} has no HookedTransformer (removed in 4.0): use "
                          "emi.models.layers.tl_bridge (its TransformerBridge), or install transformer-lens 3.9 "
                          "as emi's constraints.txt pins")

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.qwen2 import convert_qwen2_weights

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
