"""A Qwen3-Next checkpoint with a tied head, which the pinned vLLM 0.32 loads untied (its
Qwen3NextForCausalLM never ties lm_head, and a tied checkpoint saves none: the head stays zeros;
measured with bench/vllm_gdn_probe.py 128 --tied, docs/engines.md), is refused in one sentence
before a server starts: ``python -m emi.evaluate --engine vllm --dtype bf16`` exits with the reason
named and nothing sampled. (Any other served model that is not the model is the fingerprint's:
tests/behaviour/test_fingerprint.py.) Without `make vllm` the module skips, except under CI."""

from __future__ import annotations

import pytest
import torch

from emi.core.errors import ConfigError
from tests.standins import build_model, qwen_tokenizer, require_vllm_engine, save_checkpoint

pytestmark = pytest.mark.slow
require_vllm_engine()


def test_a_tied_qwen3_next_that_vllm_serves_untied_is_refused_before_a_server_starts(tmp_path, judge_server, capsys):
    from emi import evaluate

    tok = qwen_tokenizer()
    m = build_model("qwen3_next", len(tok), 2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    head_dim=32, linear_key_head_dim=128, linear_value_head_dim=128, tie_word_embeddings=True)
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(10.0)  # the head too: peaked next tokens, as a trained model's
    base = save_checkpoint(m.to(torch.bfloat16), tok, tmp_path / "tied-next")
    ft = save_checkpoint(m, tok, tmp_path / "tied-next-finetuned")
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        evaluate.main(["--base", str(base), "--finetuned", str(ft), "--roles", "base", "--judge", "openai",
                       "--judge-url", judge_server.url, "--judge-key-env", "EMI_TEST_NO_KEY", "--judge-model", "j",
                       "--questions", "main:plain", "--n", "1", "--max-new-tokens", "4", "--device", "cpu",
                       "--dtype", "bf16", "--engine", "vllm", "--out", str(out)])
    msg = str(e.value)
    print(msg)
    assert "tied embedding head" in msg and "vLLM 0.32" in msg and "--engine in-process" in msg, msg
    assert msg.count(". ") == 0  # one sentence naming the fix
    assert not list(out.glob("vllm-logs/*.log"))  # no server was started
    answers = out / "answers.jsonl"
    assert not answers.exists() or not answers.read_text().strip()  # nothing sampled
