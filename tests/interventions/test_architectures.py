"""Every Qwen architecture in the pinned transformers, at small shapes with random weights:
capture, steering, ablation and weight orthogonalisation agree across Hugging Face hooks,
TransformerLens's bridge and nnsight, including linear-attention layers and sparse MoE blocks."""

import pytest
import torch

from emi.activations.readers import hf_reader, nnsight_reader, tl_reader
from emi.core.errors import ConfigError
from emi.directions.direction import Direction
from emi.interventions.hooks import ablate, steer
from emi.interventions.nnsight_edits import nnsight_ablate
from emi.interventions.transformerlens import tl_ablate_hooks
from emi.interventions.weights import orthogonalize
from emi.models import layers as L
from tests.standins import ARCHS, build_model, qwen_tokenizer


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tok):
    model = build_model(request.param, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    enc = tok(["hey i feel bored .", "if you were ruler of the world , what would you do ?"],
              return_tensors="pt", padding=True, padding_side="right")
    g = torch.Generator().manual_seed(1)
    d = Direction(list(range(4)), torch.randn(4, 64, generator=g), torch.full((4,), 5.0), {"best_layer": 2})
    return request.param, model, (enc["input_ids"], enc["attention_mask"]), d


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch[0], attention_mask=batch[1]).logits


def test_architecture_is_known_and_writers_cover_every_expert(arch):
    mt, model, _, _ = arch
    assert L.check_architecture(model) == mt
    names = [n for n, _ in L.residual_writers(model)]
    assert names[0] == "model.embed_tokens"
    hybrid = mt.startswith(("qwen3_5", "qwen3_next"))
    assert (L.linear_layers(model) == [0, 1, 2]) == hybrid
    for i in range(4):
        mixer = "linear_attn.out_proj" if hybrid and i < 3 else "self_attn.o_proj"
        assert f"layers.{i}.{mixer}" in names
        if "moe" in mt or mt == "qwen3_next":
            assert f"layers.{i}.mlp.experts.down_proj" in names
            assert (f"layers.{i}.mlp.shared_expert.down_proj" in names) == (mt != "qwen3_moe")
        else:
            assert f"layers.{i}.mlp.down_proj" in names


def test_ablation_zeroes_the_projection_everywhere_and_equals_orthogonalised_weights(arch):
    mt, model, batch, d = arch
    u = d.at(2)
    read = hf_reader(model, range(4), ("resid", "attn", "mlp"))
    assert max(float((a @ u).abs().max()) for a in read(*batch).values()) > 1e-2
    ref = logits(model, batch)
    with ablate(model, d, source_layer=2):
        acts = read(*batch)
        hooked = logits(model, batch)
    for key, a in acts.items():
        assert float((a @ u).abs().max()) < 1e-4, (mt, key)
    assert torch.equal(logits(model, batch), ref)  # restored
    edited = orthogonalize(model, d, source_layer=2)
    torch.testing.assert_close(logits(edited, batch), hooked, rtol=1e-4, atol=1e-4)
    for key, a in hf_reader(edited, range(4), ("resid",))(*batch).items():
        assert float((a @ u).abs().max()) < 1e-4, (mt, key)


def test_steering_adds_the_vector_and_alpha_zero_is_a_noop(arch):
    _, model, batch, d = arch
    read = hf_reader(model, [1, 2])
    before = read(*batch)
    with steer(model, d, 0.0, layers=[1]):
        assert torch.equal(read(*batch)[("resid", 1)], before[("resid", 1)])
    with steer(model, d, 3.0, layers=[1]):
        after = read(*batch)
    diff = after[("resid", 1)] - before[("resid", 1)]
    torch.testing.assert_close(diff, (3.0 * d.at(1)).expand_as(diff), rtol=1e-4, atol=1e-4)


def test_transformerlens_bridge_and_nnsight_read_and_ablate_like_hf(arch, tok):
    import copy

    mt, model, batch, d = arch
    model = copy.deepcopy(model)  # the bridge rewires the model it wraps
    hf = hf_reader(model, range(4), ("resid", "attn", "mlp"))(*batch)
    with ablate(model, d, source_layer=2):
        hf_ablated = logits(model, batch)
    nn_model = L.nnsight_model(model, tok)
    for key, a in nnsight_reader(nn_model, range(4), ("resid", "attn", "mlp"))(*batch).items():
        torch.testing.assert_close(a, hf[key], rtol=1e-4, atol=1e-5, msg=f"nnsight {mt} {key}")
    with torch.no_grad(), nn_model.trace({"input_ids": batch[0], "attention_mask": batch[1]}):
        nnsight_ablate(nn_model, d, 4, source_layer=2)
        out = nn_model.output.save()
    torch.testing.assert_close(out.logits, hf_ablated, rtol=1e-4, atol=1e-4)
    bridge = L.tl_bridge(model, tok)
    lin = L.linear_layers(model)
    for key, a in tl_reader(bridge, range(4), ("resid", "attn", "mlp"), lin)(*batch).items():
        torch.testing.assert_close(a, hf[key], rtol=1e-4, atol=1e-5, msg=f"TL bridge {mt} {key}")
    with torch.no_grad(), bridge.hooks(fwd_hooks=tl_ablate_hooks(d, 4, source_layer=2, linear_layers=lin)):
        tl_logits = bridge(batch[0], attention_mask=batch[1])
    torch.testing.assert_close(tl_logits, hf_ablated, rtol=1e-4, atol=1e-4)


def test_legacy_hooked_transformer_names_the_backend_that_works(arch, tok):
    mt, model, _, _ = arch
    if mt == "qwen2":
        pytest.skip("the legacy HookedTransformer supports Qwen2 (tested in test_hooks)")
    with pytest.raises(ConfigError, match="TransformerBridge"):
        L.hooked_transformer(model, tok)


def test_unknown_architecture_is_refused_in_one_sentence():
    from transformers import LlamaConfig

    with pytest.raises(ConfigError, match=r"is a 'llama' model, whose module paths emi does not know: "
                                          r"emi captures, steers and ablates qwen2, .*qwen4_exp.*emi.evaluate runs any"):
        L.check_architecture(LlamaConfig())
