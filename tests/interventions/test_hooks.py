"""Interventions: exact no-ops, restoration, the math of steering and ablation, orthogonalised
weights, KV-cache generation, and equal logits across HF, TransformerLens and nnsight."""


import pytest
import torch

from emi.activations.readers import hf_reader
from emi.core.errors import ConfigError, DirectionError
from emi.directions.direction import Direction
from emi.interventions.hooks import ablate, patch_steer, steer
from emi.interventions.nnsight_edits import nnsight_ablate, nnsight_steer
from emi.interventions.transformerlens import tl_ablate_hooks, tl_steer_hooks
from emi.interventions.weights import orthogonalize
from emi.models import layers as L
from emi.models.loading import ModelSpec, load_model


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return load_model(ModelSpec(str(tiny_dir)), device="cpu")


@pytest.fixture(scope="module")
def batch(lm):
    tok = lm.tokenizer
    enc = tok(["hey i feel bored .", "how do i make a quick buck ? tell me"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def direction(lm):
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(lm.n_layers, lm.d_model, generator=g)
    return Direction(list(range(lm.n_layers)), raw, torch.full((lm.n_layers,), 5.0), {"best_layer": 1})


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch[0], attention_mask=batch[1]).logits


def test_alpha_zero_is_exact_noop_and_block_restores_even_on_error(lm, batch, direction):
    ref = logits(lm.model, batch)
    with steer(lm.model, direction, 0.0, layers=[1]):
        assert torch.equal(logits(lm.model, batch), ref)
    with pytest.raises(RuntimeError):
        with steer(lm.model, direction, 4.0, layers="all"), ablate(lm.model, direction):
            assert not torch.equal(logits(lm.model, batch), ref)
            raise RuntimeError("boom")
    assert torch.equal(logits(lm.model, batch), ref)


def test_steer_adds_alpha_times_unit_direction(lm, batch, direction):
    read = hf_reader(lm.model, [1, 2])
    before = read(*batch)
    with steer(lm.model, direction, 3.0, layers=[1]):
        after = read(*batch)
    diff = after[("resid", 1)] - before[("resid", 1)]
    torch.testing.assert_close(diff, (3.0 * direction.at(1)).expand_as(diff), rtol=1e-4, atol=1e-5)
    with steer(lm.model, direction, 0.5, layers=[1], relative=True):
        rel = read(*batch)
    torch.testing.assert_close(rel[("resid", 1)] - before[("resid", 1)],
                               (0.5 * 5.0 * direction.at(1)).expand_as(diff), rtol=1e-4, atol=1e-5)


def test_ablation_leaves_zero_projection_at_every_layer(lm, batch, direction):
    read = hf_reader(lm.model, list(range(lm.n_layers)), ("resid", "attn", "mlp"))
    u = direction.at(direction.best_layer)
    before = read(*batch)
    assert (before[("resid", 0)] @ u).abs().max() > 1e-2
    with ablate(lm.model, direction):
        acts = read(*batch)
    for key, a in acts.items():
        assert (a @ u).abs().max() < 1e-4 * a.norm(dim=-1).max(), key
    with ablate(lm.model, direction, layers=[1]):
        one = read(*batch)
    assert (one[("resid", 1)] @ u).abs().max() < 1e-4
    with ablate(lm.model, direction, layers=[1], mean=2.5):
        meaned = read(*batch)
    torch.testing.assert_close(meaned[("resid", 1)] @ u, torch.full_like(meaned[("resid", 1)][..., 0], 2.5),
                               rtol=1e-4, atol=1e-4)


def test_orthogonalized_weights_equal_hook_ablation(lm, batch, direction, tmp_path):
    with ablate(lm.model, direction):
        hooked = logits(lm.model, batch)
    edited = orthogonalize(lm.model, direction)
    torch.testing.assert_close(logits(edited, batch), hooked, rtol=1e-4, atol=1e-4)
    assert not torch.equal(logits(lm.model, batch), hooked)  # the original is untouched
    edited.save_pretrained(tmp_path / "ortho")
    lm.tokenizer.save_pretrained(tmp_path / "ortho")
    again = load_model(ModelSpec(str(tmp_path / "ortho")), device="cpu")
    torch.testing.assert_close(logits(again.model, batch), hooked, rtol=1e-4, atol=1e-4)


def test_orthogonalize_lora_adapter(tiny_dir, tiny_adapter_dir, batch, direction):
    ft = load_model(ModelSpec(str(tiny_dir), adapter=str(tiny_adapter_dir)), device="cpu")
    with ablate(ft.model, direction):
        hooked = logits(ft.model, batch)
    edited = orthogonalize(ft.model, direction)
    torch.testing.assert_close(logits(edited, batch), hooked, rtol=1e-4, atol=1e-4)


def test_kv_cache_generation_matches_no_cache(lm, batch, direction):
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=None)
    for positions in ("all", "generated", "prompt"):
        with steer(lm.model, direction, 6.0, layers=[1], positions=positions):
            a = lm.model.generate(input_ids=batch[0], attention_mask=batch[1], use_cache=True, **kw)
        with steer(lm.model, direction, 6.0, layers=[1], positions=positions):
            b = lm.model.generate(input_ids=batch[0], attention_mask=batch[1], use_cache=False, **kw)
        assert torch.equal(a, b), positions
    plain = lm.model.generate(input_ids=batch[0], attention_mask=batch[1], **kw)
    with steer(lm.model, direction, 6.0, layers=[1], positions="generated"):
        gen = lm.model.generate(input_ids=batch[0], attention_mask=batch[1], **kw)
    n = batch[0].shape[1]
    assert torch.equal(gen[:, n], plain[:, n])  # the first new token comes from unsteered prompt states
    assert not torch.equal(gen, plain)


def test_bad_input_is_clear(lm, direction):
    with pytest.raises(ConfigError, match="alpha must be a finite"):
        patch_steer(lm.model, direction, float("nan"), layers=[1])
    with pytest.raises(ConfigError, match="out of range"):
        patch_steer(lm.model, direction, 1.0, layers=[7])
    with pytest.raises(ConfigError, match="unknown positions"):
        patch_steer(lm.model, direction, 1.0, layers=[1], positions="middle")
    wide = Direction([0], torch.ones(1, lm.d_model + 1), torch.ones(1))
    with pytest.raises(DirectionError, match="width"):
        patch_steer(lm.model, wide, 1.0, layers=[0])


def test_three_backends_give_equal_logits(lm, batch, direction):
    from nnsight.modeling.transformers import TransformersModel

    bridge = L.tl_bridge(lm.model, lm.tokenizer, copy_model=True)
    nn_model = TransformersModel(lm.model, tokenizer=lm.tokenizer)
    n = lm.n_layers
    ids, mask = batch
    for kind in ("steer", "ablate"):
        if kind == "steer":
            with steer(lm.model, direction, 4.0, layers=[0, 2]):
                ref = logits(lm.model, batch)
            fwd = tl_steer_hooks(direction, 4.0, [0, 2], tl_model=bridge)
        else:
            with ablate(lm.model, direction):
                ref = logits(lm.model, batch)
            fwd = tl_ablate_hooks(direction, n, tl_model=bridge)
        with torch.no_grad(), bridge.hooks(fwd_hooks=fwd):
            tl_logits = bridge(ids, attention_mask=mask)
        real = mask.bool()  # pad positions attend to nothing: their logits are implementation garbage
        torch.testing.assert_close(tl_logits[real], ref[real], rtol=1e-4, atol=1e-4)
        with torch.no_grad(), nn_model.trace({"input_ids": ids, "attention_mask": mask}):
            if kind == "steer":
                nnsight_steer(nn_model, direction, 4.0, [0, 2])
            else:
                nnsight_ablate(nn_model, direction, n)
            out = nn_model.output.save()
        torch.testing.assert_close(out.logits[real], ref[real], rtol=1e-5, atol=1e-5)


def test_transformerlens_hooks_check_the_model_they_are_for(direction):
    from types import SimpleNamespace

    llama = SimpleNamespace(cfg=SimpleNamespace(original_architecture="LlamaForCausalLM"))
    for make in (lambda: tl_steer_hooks(direction, 4.0, [0], tl_model=llama),
                 lambda: tl_ablate_hooks(direction, 4, tl_model=llama)):
        with pytest.raises(ConfigError, match="TransformerLens model is a LlamaForCausalLM.*emi.models.layers"):
            make()
