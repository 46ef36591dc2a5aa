"""python -m emi.export: the ablated model as an ordinary checkpoint, on stand-in pairs (full
finetunes of a tied-embedding and an MoE architecture, and a LoRA organism; Qwen4-Exp with
several residual streams, full and LoRA, and refused where its PLE convolution writes)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from emi import export
from emi.core.errors import ConfigError
from emi.directions.direction import Direction
from emi.interventions import hooks
from emi.models.loading import ModelSpec, load_model
from tests.standins import full_pair, lora_adapter, qwen_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok = qwen_tokenizer()
    out = {}
    for i, arch in enumerate(("qwen2", "qwen3_moe")):
        base, ft = full_pair(root, arch, tok, seed=10 + i)
        out[arch] = (base, ft)
    base, _ = out["qwen2"]
    out["lora"] = (base, lora_adapter(root, base, std=0.2))
    # Qwen4-Exp with PLE's short convolution as initialised (zero): every residual writer is linear
    hc = root / "hc-linear"
    hc.mkdir()
    out["qwen4_exp"] = full_pair(hc, "qwen4_exp_text", tok, seed=12, ple_conv=False)
    out["qwen4_exp-lora"] = (out["qwen4_exp"][0], lora_adapter(hc, out["qwen4_exp"][0], std=0.2))
    conv = root / "hc-conv"
    conv.mkdir()
    out["qwen4_exp-conv"] = full_pair(conv, "qwen4_exp_text", tok, seed=13)
    d_model = 64
    g = torch.Generator().manual_seed(3)
    direction = Direction([0, 1, 2, 3], torch.randn(4, d_model, generator=g), torch.full((4,), 5.0), {"best_layer": 2})
    out["direction"] = direction.save(root / "d.safetensors")
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["qwen2", "qwen3_moe", "lora", "qwen4_exp", "qwen4_exp-lora"])
def test_exported_checkpoint_is_the_hook_ablated_model(kind, made, tmp_path):
    base, ft = made[kind]
    out = tmp_path / "ortho"
    assert export.main(["--base", str(base), "--finetuned", str(ft), "--direction", str(made["direction"]),
                        "--device", "cpu", "--out", str(out)]) == 0
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250]])
    ref = load_model(ModelSpec(str(ft)), device="cpu")
    with ref.active() as m, hooks.ablate(m, Direction.load(made["direction"])):
        want = logits(m, ids)
    got = logits(AutoModelForCausalLM.from_pretrained(out), ids)  # what a server loads: plain transformers
    assert torch.allclose(got, want, atol=1e-4)
    meta = json.loads((out / "export.json").read_text())
    assert meta["source_layer"] == 2 and meta["role"] == "finetuned"
    if kind.endswith("lora"):  # the edited adapter on the edited base is the same model
        from peft import PeftModel

        ortho_base = tmp_path / "ortho-base"
        assert export.main(["--base", str(base), "--finetuned", str(ft), "--direction", str(made["direction"]),
                            "--device", "cpu", "--role", "base", "--out", str(ortho_base)]) == 0
        served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ortho_base), out / "adapter")
        assert torch.allclose(logits(served, ids), want, atol=1e-4)
    assert not list(tmp_path.glob(".ortho.tmp-*"))


def test_export_refuses_a_model_whose_ple_convolution_writes_into_the_streams(made, tmp_path):
    base, ft = made["qwen4_exp-conv"]
    with pytest.raises(ConfigError, match=r"'qwen4_exp_text' model \(Qwen4ExpForCausalLM\) writes into its residual "
                                          r"streams through layers.0.ple.conv1d, layers.1.ple.conv1d .*ablate it with hooks"):
        export.main(["--base", str(base), "--finetuned", str(ft), "--direction", str(made["direction"]),
                     "--device", "cpu", "--out", str(tmp_path / "ortho")])
    assert not (tmp_path / "ortho").exists() and not list(tmp_path.glob(".ortho.tmp-*"))


def test_export_refuses_a_folder_in_use(made, tmp_path):
    base, ft = made["qwen2"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export.main(["--base", str(base), "--finetuned", str(ft), "--direction", str(made["direction"]),
                     "--out", str(tmp_path / "full")])
    assert (tmp_path / "full" / "x").read_text() == "mine"
