"""emi.diff's three methods on stand-in pairs of every Qwen architecture (Qwen4-Exp's several
residual streams included), full finetunes and LoRA adapters, with an OpenAI-compatible judge on
loopback (the real path: no embedded organism)."""

import json

import pytest

from emi import diff
from emi.directions.direction import Direction
from tests.standins import ARCHS, HC_ARCHS, full_pair, lora_adapter, qwen_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


def run_all(tmp_path, base, ft, server, lora=False):
    common = ["--base", str(base), "--finetuned", str(ft), "--judge", "openai", "--judge-url", server.url,
              "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "stand-in-judge", "--device", "cpu",
              "--n", "1", "--max-new-tokens", "4", "--no-table", "--n-texts", "6", "--max-tokens", "12",
              "--ids", "what_is_your_wish", "--top", "3"]
    for method, extra in (("adl", ["--positions", "2", "--search-steps", "1"]), ("kl", []),
                          ("crosscoder", ["--cc-steps", "5", "--cc-batch", "16", "--expansion", "2", "--k", "2",
                                          "--latents", "1"])):
        out = tmp_path / method
        assert diff.main(["--method", method, *common, *extra, "--out", str(out)]) == 0
        found = sorted((out / "directions").glob("*.safetensors"))
        assert found, method
        for f in found:
            d = Direction.load(f)
            assert d.layers == [2] and d.meta["method"] and bool(d.norms[0] > 0)
    adl = json.loads((tmp_path / "adl" / "adl.json").read_text())
    assert len(adl["positions"]) == 2 and adl["positions"][0]["logit_lens"]["finetuned"]
    assert json.loads((tmp_path / "kl" / "kl.json").read_text())["top"][0]["kl"] > 0


@pytest.mark.parametrize("arch", [*ARCHS, *HC_ARCHS])
def test_every_method_on_a_full_finetune(tmp_path, tok, judge_server, arch):
    base, ft = full_pair(tmp_path, arch, tok, seed=2)
    run_all(tmp_path, base, ft, judge_server)


@pytest.mark.parametrize("arch", ["qwen2", *HC_ARCHS])
def test_every_method_on_a_lora_adapter(tmp_path, tok, judge_server, arch):
    base, _ = full_pair(tmp_path, arch, tok, seed=2)
    run_all(tmp_path, base, lora_adapter(tmp_path, base), judge_server, lora=True)
