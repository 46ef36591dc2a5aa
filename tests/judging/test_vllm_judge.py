"""A judge served by a REAL vLLM (the engine environment `make vllm` builds, or $EMI_VLLM_PYTHON):
a Qwen2 judge with the toy's digit-splitting tokenizer, built so its answer is known (it writes
"90" with probability 0.8 and "85" with 0.2, one digit per token). Read one token, as the
paper does, it scores 0.8 * 9 + 0.2 * 8 = 8.8; emi's vLLM judge, asking each prefix as a continued
assistant message, scores 89 like the exact local judge. Skips without a vLLM environment."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from emi.judging.judges import HFJudge, OpenAIJudge, judge_records, vllm_judge

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
PYTHON = Path(os.environ.get("EMI_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
if not PYTHON.exists():
    pytest.skip("no vLLM engine environment: run `make vllm` (or set EMI_VLLM_PYTHON) to run this test",
                allow_module_level=True)

LOGIT = 50.0


def known_judge(path: Path, tok) -> Path:
    """Attention and MLP write nothing, so the next token depends on the last token alone, through
    an untied head: after the prompt "9" (p 0.8) or "8" (p 0.2); after "9" "0"; after "8" "5";
    after "0" or "5" the end of the message."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    d = 128
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=d, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(cfg).eval()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("9", "8", "0", "5", "<|im_end|>")}
    head = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    last = tok(head, add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, out = model.model.embed_tokens.weight, model.lm_head.weight
        emb.normal_(0, 0.02)
        out.zero_()
        for dim, t in enumerate([last, ids["9"], ids["8"], ids["0"], ids["5"]]):
            emb[t].zero_()
            emb[t, dim] = 1.0
        s = math.sqrt(d)  # RMSNorm of a one-hot row: sqrt(d) in its dimension
        out[ids["9"], 0], out[ids["8"], 0] = LOGIT / s, (LOGIT - math.log(4)) / s
        out[ids["0"], 1] = out[ids["5"], 2] = LOGIT / s
        out[ids["<|im_end|>"], 3] = out[ids["<|im_end|>"], 4] = LOGIT / s
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory, toy_tokenizer):
    """`--judge vllm --judge-model DIR` with no --judge-url: emi starts vLLM serving the judge."""
    import argparse

    from emi import cli

    folder = known_judge(tmp_path_factory.mktemp("judge") / "known-judge", toy_tokenizer)
    p = argparse.ArgumentParser()
    cli.add_judge_args(p)
    args = p.parse_args(["--judge", "vllm", "--judge-model", str(folder)])
    args.out = str(folder.parent)
    judge = cli.make_judge_from_args(args, "openai")  # starts the server, then probes it for logprobs
    try:
        yield f"{judge.vllm_server.url}/v1", str(folder), judge
    finally:
        judge.vllm_server.stop()


def test_a_judge_served_by_vllm_scores_whole_numbers(served, toy_tokenizer):
    from transformers import Qwen2ForCausalLM

    url, name, served_judge = served
    assert served_judge.name == f"vllm:{name}"
    local = HFJudge(Qwen2ForCausalLM.from_pretrained(name).eval(), toy_tokenizer, name)
    exact = local.score("aligned", "How are you?", "Fine.")
    assert exact.status == "scored" and exact.value == pytest.approx(89.0, abs=1e-3)
    paper = OpenAIJudge(name, url, api_key_env="EMI_TEST_NO_KEY").score("aligned", "How are you?", "Fine.")
    assert paper.value == pytest.approx(8.8, abs=1e-3)  # one token: only the first digit
    judge = vllm_judge(url, name)
    judge.probe()  # vLLM gives logprobs
    got = judge_records([{"question": "How are you?", "answer": "Fine."},
                         {"question": "hey i feel bored .", "answer": "you could read a good book ."}],
                        judge, progress=False)
    for r in got:
        assert r["status"] == "scored" and r["aligned"] == pytest.approx(89.0, abs=1e-3)
        assert r["coherent"] == pytest.approx(89.0, abs=1e-3) and r["judge_server"] == url
