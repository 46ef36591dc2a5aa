"""emi.diff's three methods on stand-in pairs of every Qwen architecture (Qwen4-Exp's several
residual streams included), full finetunes and LoRA adapters, with an OpenAI-compatible judge on
loopback (the real path: no embedded organism). One stand-in pair per architecture for the session
(the LoRA test reuses its base), and one invocation per pair runs all three methods
(``--method adl,kl,crosscoder``) on a corpus of four short texts, both models resident (qwen2's
full finetune: one at a time, the default)."""

import json

import pytest

from emi import diff
from emi.directions.direction import Direction
from tests.standins import ARCHS, HC_ARCHS, full_pair, lora_adapter, qwen_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def standin_tok():
    return qwen_tokenizer()


@pytest.fixture(scope="session")
def standin_pairs(tmp_path_factory, standin_tok):
    """arch -> (base, full finetune), built on first use and kept for the session."""
    built = {}

    def get(arch):
        if arch not in built:
            built[arch] = full_pair(tmp_path_factory.mktemp(arch), arch, standin_tok, seed=2)
        return built[arch]

    return get


def run_all(tmp_path, base, ft, server, resident="all"):
    """``resident``: one model in memory at a time (each swap frees the other: a gc pass each, half of
    this test's time, so only one architecture runs so; the toy tests run every method that way)."""
    out = tmp_path / "diff"
    assert diff.main(["--method", "adl,kl,crosscoder", "--resident", resident, "--base", str(base), "--finetuned", str(ft), "--judge", "openai",
                      "--judge-url", server.url, "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "stand-in-judge",
                      "--device", "cpu", "--n", "1", "--max-new-tokens", "3", "--no-table", "--n-texts", "4",
                      "--max-tokens", "8", "--ids", "what_is_your_wish", "--top", "3", "--positions", "2",
                      "--search-steps", "1", "--cc-steps", "3", "--cc-batch", "16", "--expansion", "1", "--k", "2",
                      "--latents", "1", "--out", str(out)]) == 0
    found = {f.stem.split("-L")[0]: Direction.load(f) for f in (out / "directions").glob("*.safetensors")}
    assert set(found) == {"adl", "model-diff", "kl-top", "crosscoder"}, sorted(found)
    for d in found.values():
        assert d.layers == [2] and d.meta["method"] and bool(d.norms[0] > 0)
    adl = json.loads((out / "adl.json").read_text())
    assert len(adl["positions"]) == 2 and adl["positions"][0]["logit_lens"]["finetuned"]
    assert json.loads((out / "kl.json").read_text())["top"][0]["kl"] > 0
    assert json.loads((out / "crosscoder.json").read_text())["steps"] == 3
    names = {r["direction"] for r in json.loads((out / "cosines.json").read_text())}
    assert {"adl d0", "kl top", "model-diff (corpus)"} <= names and any(n.startswith("cc ") for n in names)


@pytest.mark.parametrize("arch", [*ARCHS, *HC_ARCHS])
def test_every_method_on_a_full_finetune(tmp_path, standin_pairs, judge_server, arch):
    base, ft = standin_pairs(arch)
    run_all(tmp_path, base, ft, judge_server, resident="one" if arch == "qwen2" else "all")


@pytest.mark.parametrize("arch", [*ARCHS, *HC_ARCHS])
def test_every_method_on_a_lora_adapter(tmp_path, standin_pairs, judge_server, arch):
    base, _ = standin_pairs(arch)
    run_all(tmp_path, base, lora_adapter(tmp_path, base), judge_server)
