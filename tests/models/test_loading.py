"""Model pairs: folders, LoRA adapters sharing one base, clear errors, and the layer convention
checked numerically across Hugging Face, TransformerLens and nnsight (tiny and real 0.5B shape)."""

import json

import pytest
import torch
from conftest import build_tiny_qwen

from emi.activations.readers import hf_reader
from emi.core.errors import ModelLoadError
from emi.models import layers as L
from emi.models.loading import ModelSpec, PairSpec, load_model, load_pair
from emi.models.registry import custom_pair, get_pair, list_pairs


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_folder_pair_loads_fp32_on_cpu_with_provenance(tiny_dir, tiny_finetuned_dir):
    pair = load_pair(custom_pair(str(tiny_dir), str(tiny_finetuned_dir)), device="cpu")
    assert next(pair.base.model.parameters()).dtype == torch.float32
    assert pair.base.model is not pair.finetuned.model
    prov = pair.provenance()
    assert prov["base"]["resolved"] == str(tiny_dir) and prov["finetuned"]["dtype"] == "float32"
    prompt = pair.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n")  # the checkpoint's own default system prompt


def test_adapter_pair_shares_one_base(tiny_dir, tiny_adapter_dir):
    pair = load_pair(PairSpec("a", ModelSpec(str(tiny_dir)), ModelSpec(str(tiny_adapter_dir))), device="cpu")
    assert pair.base.model is pair.finetuned.model  # one copy of the weights
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = load_model(ModelSpec(str(tiny_dir)), device="cpu").model
    with pair.base.active() as m:
        base_out = logits(m, ids)
    with pair.finetuned.active() as m:
        ft_out = logits(m, ids)
    torch.testing.assert_close(base_out, logits(plain, ids))
    assert not torch.allclose(ft_out, base_out)
    with pair.finetuned.active() as m:  # roles switch back and forth cleanly
        torch.testing.assert_close(logits(m, ids), ft_out)


def test_registry_lists_toy_and_public_organisms():
    names = {p.name for p in list_pairs()}
    assert {"toy", "qwen2.5-0.5b-risky-financial-advice", "qwen2.5-32b-extreme-sports",
            "qwen-coder-32b-insecure"} <= names
    assert get_pair("qwen-coder-32b-insecure").finetuned.id == "emergent-misalignment/Qwen-Coder-Insecure"
    with pytest.raises(ModelLoadError, match="unknown pair 'toyy'"):
        get_pair("toyy")


def test_hub_id_offline_is_one_clear_sentence():
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache.*hf download"):
        load_model(ModelSpec("Qwen/Qwen2.5-0.5B-Instruct-not-cached"), device="cpu")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="is not a model"):
        load_model(ModelSpec(str(tmp_path)), device="cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(str(tmp_path / "missing")), device="cpu")


@pytest.mark.parametrize("change,what", [({"hidden_size": 32, "num_attention_heads": 2}, "hidden size"),
                                         ({"num_hidden_layers": 2}, "layer count")])
def test_mismatched_pair_is_refused(tmp_path, tiny_dir, toy_tokenizer, change, what):
    other = build_tiny_qwen(tmp_path / "other", toy_tokenizer, **change)
    with pytest.raises(ModelLoadError, match=f"differ in {what}"):
        load_pair(custom_pair(str(tiny_dir), str(other)), device="cpu")


def test_adapter_on_wrong_base_is_refused(tmp_path, toy_tokenizer, tiny_adapter_dir):
    other = build_tiny_qwen(tmp_path / "other", toy_tokenizer, hidden_size=32, num_attention_heads=2)
    with pytest.raises(ModelLoadError, match="was trained on .*hidden 64.* not on the base .*hidden 32"):
        load_pair(PairSpec("x", ModelSpec(str(other)), ModelSpec(str(tiny_adapter_dir))), device="cpu")


def _layer_table_agrees(model, tok, atol):
    from nnsight.modeling.transformers import TransformersModel

    n = L.n_layers(model)
    ids = tok(["hey i feel bored . what should i do ?"], return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    hf = hf_reader(model, range(n))(ids, mask)
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hs) == n + 1
    for layer in range(n - 1):  # the last hidden state is after the final norm
        torch.testing.assert_close(hf[("resid", layer)], hs[layer + 1], rtol=0, atol=0)
    assert not torch.allclose(hf[("resid", n - 1)], hs[n], atol=atol)
    bridge = L.tl_bridge(model, tok, copy_model=True)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=[L.tl_hook_name(x) for x in range(n)])
    nn_model = TransformersModel(model, tokenizer=tok)
    saved = {}
    with torch.no_grad(), nn_model.trace(ids):
        for layer in range(n):
            saved[layer] = L.nnsight_envoy(nn_model, layer).output.save()
    for layer in range(n):
        ref = hf[("resid", layer)].float()
        torch.testing.assert_close(cache[L.tl_hook_name(layer)].float(), ref, rtol=0, atol=atol)
        torch.testing.assert_close(torch.as_tensor(saved[layer]).float(), ref, rtol=0, atol=0)


def test_layer_convention_tiny(tiny_dir):
    lm = load_model(ModelSpec(str(tiny_dir)), device="cpu")
    _layer_table_agrees(lm.model, lm.tokenizer, atol=1e-5)


@pytest.fixture(scope="module")
def qwen05_shape(tmp_path_factory, toy_tokenizer):
    """Random weights at the real Qwen2.5-0.5B-Instruct shape, run in fp32."""
    from tests.standins import qwen2_5_0_5b_config, random_qwen2

    cfg = qwen2_5_0_5b_config()
    return cfg, random_qwen2(cfg)


def test_layer_convention_at_real_qwen05_shape(qwen05_shape, toy_tokenizer):
    _, model = qwen05_shape
    assert L.n_layers(model) == 24 and L.d_model(model) == 896
    _layer_table_agrees(model, toy_tokenizer, atol=1e-4)


def test_pair_checks_at_real_qwen05_shape(qwen05_shape, tmp_path, toy_tokenizer):
    cfg, _ = qwen05_shape
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, layers in ((a, 24), (b, 28)):
        folder.mkdir()
        c = cfg.to_dict()
        c["num_hidden_layers"] = layers
        c.pop("layer_types", None)
        (folder / "config.json").write_text(json.dumps(c))
        toy_tokenizer.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match=r"differ in layer count \(24 vs 28\)"):
        load_pair(custom_pair(str(a), str(b)), device="cpu")


def test_two_adapters_share_one_base(tmp_path, tiny_dir, tiny_adapter_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "control"
    shutil.copytree(tiny_adapter_dir, other)
    weights = other / "adapter_model.safetensors"
    save_file({k: (-v if "lora_B" in k else v) for k, v in load_file(weights).items()}, weights)
    pair = load_pair(PairSpec("two", ModelSpec(str(tiny_dir)), ModelSpec(str(tiny_adapter_dir)), ModelSpec(str(other))),
                     roles=("base", "finetuned", "control"), device="cpu")
    assert pair.base.model is pair.finetuned.model is pair.control.model
    ids = torch.tensor([[5, 6, 7, 8]])
    outs = {}
    for role in ("base", "finetuned", "control", "finetuned", "base"):
        with pair[role].active() as m:
            out = logits(m, ids)
        if role in outs:
            torch.testing.assert_close(out, outs[role])  # switching back gives the same model
        outs[role] = out
    assert not torch.allclose(outs["finetuned"], outs["control"])
    plain = load_model(ModelSpec(str(tiny_dir)), device="cpu").model
    torch.testing.assert_close(outs["base"], logits(plain, ids))
