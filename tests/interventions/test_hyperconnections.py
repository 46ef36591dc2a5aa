"""Models with several residual streams (Qwen4-Exp's hyper-connections, PLE, QSA), on random-weight
stand-ins: what emi's ``resid``, steering and ablation promise there (docs/conventions.md, layer convention)."""

import copy

import pytest
import torch

from emi.activations.readers import hf_reader, nnsight_reader
from emi.core.errors import ConfigError, DirectionError
from emi.directions.direction import Direction
from emi.interventions.hooks import ablate, steer
from emi.interventions.nnsight_edits import nnsight_ablate, nnsight_steer
from emi.interventions.vector import project_out_streams
from emi.interventions.weights import orthogonalize
from emi.models import layers as L
from tests.standins import build_model, qwen_tokenizer

D = 64


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


def make(tok, **kw):
    return build_model("qwen4_exp_text", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kw)


@pytest.fixture(scope="module")
def model(tok):  # hc_count 2, PLE on layers 1-2 (1-based) with a non-zero short convolution, QSA on layer 3
    return make(tok)


@pytest.fixture(scope="module")
def batch(tok):
    enc = tok(["hey i feel bored .", "if you were ruler of the world , what would you do ?"],
              return_tensors="pt", padding=True, padding_side="right")
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def d():
    g = torch.Generator().manual_seed(1)
    return Direction(list(range(4)), torch.randn(4, D, generator=g), torch.full((4,), 5.0), {"best_layer": 2})


def logits(m, batch):
    with torch.no_grad():
        return m(input_ids=batch[0], attention_mask=batch[1]).logits


def max_proj(acts, u):
    return max(float((a @ u).abs().max()) for a in acts.values())


def test_the_stand_in_has_streams_ple_and_qsa(model):
    assert L.check_architecture(model) == "qwen4_exp_text"
    assert L.n_streams(model) == 2 and L.ple_layers(model) == [0, 1] and L.linear_layers(model) == [0, 1, 2]
    assert model.model.layers[3].self_attn.indexer is not None
    names = [n for n, _, _ in L.hook_writers(model)]
    assert names[:4] == ["model.embed_tokens", "layers.0.ple", "layers.0.linear_attn", "layers.0.mlp"]
    assert "layers.1.ple.value_proj" in [n for n, _ in L.residual_writers(model)]


def test_resid_is_the_mean_over_streams_and_resid_streams_every_stream(model, batch):
    acts = hf_reader(model, [1, 3], ("resid", "resid_streams"))(*batch)
    for layer in (1, 3):
        streams = acts[("resid_streams", layer)]
        assert streams.shape == (*batch[0].shape, 2, D)
        torch.testing.assert_close(acts[("resid", layer)], streams.mean(-2))
        assert float((streams[..., 0, :] - streams[..., 1, :]).abs().max()) > 1e-2  # the streams differ


def test_ablation_leaves_zero_projection_in_every_stream(model, batch, d):
    u = d.at(2)
    read = hf_reader(model, range(4), ("resid_streams", "attn", "mlp"))
    assert max_proj(read(*batch), u) > 1e-1
    ref = logits(model, batch)
    with ablate(model, d, source_layer=2):
        assert max_proj(read(*batch), u) < 1e-4
    assert torch.equal(logits(model, batch), ref)  # restored
    # the PLE is a writer of its own: skipping it leaves the direction in the streams
    skip = [m.register_forward_hook(lambda _m, _i, out, k=k: L.replace_output(
        out, project_out_streams(L.output_tensor(out), u, k))) for n, m, k in L.hook_writers(model) if ".ple" not in n]
    try:
        assert max_proj(read(*batch), u) > 1e-1
    finally:
        for h in skip:
            h.remove()


def test_chosen_layer_and_mean_ablation_act_on_every_stream(model, batch, d):
    u = d.at(2)
    with ablate(model, d, layers=[1], source_layer=2):
        streams = hf_reader(model, [1], ("resid_streams",))(*batch)[("resid_streams", 1)]
    assert float((streams @ u).abs().max()) < 1e-4
    with ablate(model, d, layers=[1], source_layer=2, mean=3.0):
        streams = hf_reader(model, [1], ("resid_streams",))(*batch)[("resid_streams", 1)]
    torch.testing.assert_close(streams @ u, torch.full(streams.shape[:-1], 3.0), rtol=1e-4, atol=1e-4)


def test_steering_adds_alpha_d_to_every_stream_so_resid_moves_by_alpha_d(model, batch, d):
    read = hf_reader(model, [1, 2], ("resid", "resid_streams"))
    before = read(*batch)
    with steer(model, d, 3.0, layers=[1]):
        after = read(*batch)
    step = 3.0 * d.at(1)
    torch.testing.assert_close(after[("resid", 1)] - before[("resid", 1)], step.expand(*batch[0].shape, D),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after[("resid_streams", 1)] - before[("resid_streams", 1)],
                               step.expand(*batch[0].shape, 2, D), rtol=1e-4, atol=1e-4)
    assert float((after[("resid", 2)] - before[("resid", 2)]).abs().max()) > 1e-3  # later layers read it


def test_with_one_stream_steering_and_ablation_are_the_dense_definitions(tok, batch, d):
    """hc_count=1 (the config refuses it; set after validation): the one stream is the residual, and
    emi's steering equals adding alpha*d to the decoder layer's output, as on a dense Qwen."""
    from tests.standins import small_config

    cfg = small_config("qwen4_exp_text", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    cfg.hc_count = 1
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    one = AutoModelForCausalLM.from_config(cfg).eval()
    assert L.n_streams(one) == 1
    acts = hf_reader(one, [1], ("resid", "resid_streams"))(*batch)
    torch.testing.assert_close(acts[("resid", 1)], acts[("resid_streams", 1)][..., 0, :])
    with steer(one, d, 3.0, layers=[1]):
        ours = logits(one, batch)
    handle = one.model.layers[1].register_forward_hook(lambda _m, _i, out: out + 3.0 * d.at(1))
    try:
        dense = logits(one, batch)
    finally:
        handle.remove()
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-5)
    with ablate(one, d, source_layer=2):
        assert max_proj(hf_reader(one, range(4), ("resid",))(*batch), d.at(2)) < 1e-4


def test_orthogonalised_weights_equal_hook_ablation_when_every_writer_is_linear(tok, batch, d):
    m = make(tok, ple_conv=False)  # PLE's short convolution as initialised (zero): every writer is linear
    assert L.unreachable_writers(m) == []
    with ablate(m, d, source_layer=2):
        hooked = logits(m, batch)
    edited = orthogonalize(m, d, source_layer=2)
    torch.testing.assert_close(logits(edited, batch), hooked, rtol=1e-4, atol=1e-4)
    assert max_proj(hf_reader(edited, range(4), ("resid_streams",))(*batch), d.at(2)) < 1e-4


def test_orthogonalisation_is_refused_where_ple_convolution_writes(model, d):
    assert L.unreachable_writers(model) == ["layers.0.ple.conv1d", "layers.1.ple.conv1d"]
    with pytest.raises(ConfigError, match=r"'qwen4_exp_text' model \(Qwen4ExpForCausalLM\) writes .* layers.0.ple."
                                          r"conv1d.*no weight edit.*ablate it with hooks"):
        orthogonalize(model, d)


def test_nnsight_reads_steers_and_ablates_like_the_hf_hooks(model, tok, batch, d):
    m = copy.deepcopy(model)
    hf = hf_reader(m, range(4), ("resid", "resid_streams", "attn", "mlp"))(*batch)
    nn_model = L.nnsight_model(m, tok)
    for key, a in nnsight_reader(nn_model, range(4), ("resid", "resid_streams", "attn", "mlp"))(*batch).items():
        torch.testing.assert_close(a, hf[key], rtol=1e-4, atol=1e-5, msg=f"nnsight {key}")
    for edit, hook in ((lambda: nnsight_ablate(nn_model, d, 4, source_layer=2), lambda: ablate(m, d, source_layer=2)),
                       (lambda: nnsight_steer(nn_model, d, 3.0, [1]), lambda: steer(m, d, 3.0, layers=[1]))):
        with hook():
            ref = logits(m, batch)
        with torch.no_grad(), nn_model.trace({"input_ids": batch[0], "attention_mask": batch[1]}):
            edit()
            out = nn_model.output.save()
        torch.testing.assert_close(out.logits, ref, rtol=1e-4, atol=1e-4)


def test_transformerlens_refuses_in_one_sentence_naming_what_works(model, tok):
    with pytest.raises(ConfigError, match="no adapter for a 'qwen4_exp_text' model.*2 residual streams.*"
                                          "Hugging Face hooks.*nnsight"):
        L.tl_bridge(model, tok)
    with pytest.raises(ConfigError, match="HookedTransformer.*qwen4_exp_text.*Hugging Face hooks.*nnsight"):
        L.hooked_transformer(model, tok)
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    assert "Qwen4ExpForCausalLM" not in SUPPORTED_ARCHITECTURES  # when TransformerLens adds one, use it here


def test_stores_hold_the_d_model_views_and_say_where_the_streams_are():
    from emi.activations.plan import CaptureSpec

    with pytest.raises(ConfigError, match="store holds d_model-wide sites.*hf_reader"):
        CaptureSpec((0,), ("resid_streams",))


def test_a_direction_of_the_stacked_width_is_refused_in_one_sentence(model):
    with pytest.raises(DirectionError, match=r"shape \(128,\).*d_model 64.*2 residual streams.*every stream"):
        with steer(model, torch.randn(128), 2.0, layers=[1]):
            pass
    with pytest.raises(DirectionError, match="d_model 64"):
        with ablate(model, torch.randn(128)):
            pass


def test_every_public_intervention_checks_the_architecture(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    from emi.directions.sae import patch_sae

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, vocab_size=len(tok))).eval()
    v = torch.randn(32)
    calls = {"steer": lambda: steer(llama, v, 1.0, layers=[0]).__enter__(), "ablate": lambda: ablate(llama, v).__enter__(),
             "orthogonalise": lambda: orthogonalize(llama, v), "splice an SAE into": lambda: patch_sae(llama, None, 0),
             "nnsight steer": lambda: nnsight_steer(L.nnsight_model(llama, tok), v, 1.0, [0])}
    for what, call in calls.items():
        with pytest.raises(ConfigError, match=r"is a 'llama' model \(LlamaForCausalLM\), whose module paths emi does "
                                              r"not know.*emi.evaluate runs any causal LM"):
            call()
        assert what
