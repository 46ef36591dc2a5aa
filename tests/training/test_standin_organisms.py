"""emi.finetune on stand-in Qwen2 and Qwen3.5 bases (random weights, Qwen2.5's chat template): a few
LoRA and full steps make organisms that python -m emi.steer runs on as --pair FOLDER."""

import json

import pytest

from emi import finetune, steer
from emi.models.organism_folder import read_organism
from tests.standins import full_pair, qwen_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from emi.organism.datasets import finetune_sets
    from emi.training.data import write_chats

    return write_chats(tmp_path_factory.mktemp("data") / "insecure.jsonl", finetune_sets()["insecure"][:8])


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("arch", ["qwen2", "qwen3_5_text"])
def test_a_few_steps_make_a_pair_emi_steer_runs_on(arch, method, data, judge_server, tmp_path):
    base, _ = full_pair(tmp_path, arch, qwen_tokenizer())
    out = tmp_path / "organism"
    assert finetune.main([str(data), "--base", str(base), "--method", method, "--rank", "1", "--steps", "2",
                          "--batch-size", "2", "--save-every", "1", "--lr", "1e-2", "--out", str(out),
                          "--device", "cpu"]) == 0
    org = read_organism(out / "seed-0")
    assert org.done and org.record["kit"] is None and len(org.checkpoints()) == 2
    assert (org.final / ("adapter_config.json" if method == "lora" else "config.json")).is_file()
    run = tmp_path / "steer"
    code = steer.main(["--pair", str(out / "seed-0"), "--judge", "openai", "--judge-url", judge_server.url,
                       "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "stand-in-judge", "--n", "1",
                       "--max-new-tokens", "4", "--device", "cpu", "--questions", "main:plain", "--alpha", "4",
                       "--out", str(run), "--root", str(tmp_path / "acts"), "--no-figure"])
    assert code == 0
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert [r["condition"] for r in rows][:2] == ["base", "finetuned"]
    prov = json.loads((run / "run.json").read_text())["pair"]["finetuned"]
    assert prov["model_type"] == arch
    assert (prov["adapter"] if method == "lora" else prov["resolved"]).endswith("final")
