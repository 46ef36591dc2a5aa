"""Does vLLM's CPU build serve a stand-in as transformers runs it? Builds one (default Qwen3-Next:
attention heads of 32, linear-attention heads of LINEAR, default 128; ``--tied``: the head tied to
the embedding; ``--arch qwen2`` etc. for another architecture), saves it in bf16, starts vLLM on it
through emi's launcher (``--dtype bf16``) and prints one greedy completion's token ids beside
in-process bf16 generate's, and the fingerprint's measure (emi.engines.fingerprint): the largest
gap between vLLM's top-5 log-probs and in-process bf16's for the same tokens, teacher-forced on
vLLM's greedy tokens, over STEPS (default 16) positions.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 .venv/bin/python bench/vllm_gdn_probe.py [LINEAR] [--tied] [--arch A] [--steps N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from emi.engines.fingerprint import ask, gap, reference
from emi.engines.vllm.launcher import Launcher, vllm_python
from emi.models.chat import CHAT, prompt_ids
from emi.models.loading import ModelSpec, load_model
from tests.standins import build_model, qwen_tokenizer, save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("linear", nargs="?", type=int, default=128)
    p.add_argument("--tied", action="store_true")
    p.add_argument("--arch", default="qwen3_next")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--words", type=lambda x: [int(w) for w in x.split(",")], default=[0, 8, 9, 10, 20, 40],
                   help="prompts of 'Hello there' and this many ' and more' (47 tokens and up)")
    p.add_argument("--peak", type=float, default=10.0,
                   help="scale the head by this (the embedding when tied): at its initial scale every next token is "
                        "about as likely (log p ~ -log V), where bf16 reorders near-ties and any two models look alike")
    a = p.parse_args()
    tok = qwen_tokenizer()
    root = Path(tempfile.mkdtemp())
    extra = dict(linear_key_head_dim=a.linear, linear_value_head_dim=a.linear) if a.arch == "qwen3_next" else \
        {"hidden_size": 128}  # four heads of 32
    m = build_model(a.arch, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, head_dim=32,
                    tie_word_embeddings=a.tied, **extra)
    with torch.no_grad():
        m.get_output_embeddings().weight.mul_(a.peak)  # the embedding too when tied
    m = m.to(torch.bfloat16)
    ck = save_checkpoint(m, tok, root / f"{a.arch}-{'tied' if a.tied else 'untied'}-bf16")
    lm = load_model(ModelSpec(str(ck)), dtype="bf16", device="cpu")
    fp32 = load_model(ModelSpec(str(ck)), dtype="fp32", device="cpu")  # the same bf16 weights, run in fp32
    t = time.time()
    s = Launcher(vllm_python(), "bfloat16", log_dir=root / "logs", startup_timeout=1200).checked().start(str(ck))
    print(f"{a.arch} linear {a.linear} {'tied' if a.tied else 'untied'} head x{a.peak:g}: vLLM started in "
          f"{time.time() - t:.0f} s")
    try:
        for words in a.words:
            text = "Hello there" + " and more" * words
            ids = prompt_ids(tok, [[{"role": "user", "content": text}]], CHAT)[0]
            got = ask(f"{s.url}/v1", str(ck), ids, tok, {}, steps=a.steps)
            if got is None:
                print("vLLM returned no log-probs:", s.cause())
                continue
            tokens, tops = got
            line = [f"  prompt of {len(ids)} tokens:"]
            for name, ref in (("bf16", lm), ("fp32", fp32)):
                with torch.no_grad():
                    out = ref.model.generate(torch.tensor([ids]), max_new_tokens=a.steps, do_sample=False)
                new = out[0, len(ids):].tolist()
                agree = next((i for i, (x, y) in enumerate(zip(tokens, new, strict=False)) if x != y), len(tokens))
                g = gap(reference(ref, ids, tokens), tops)
                line.append(f"vs in-process {name}: greedy agrees for {agree}/{a.steps}, largest top-5 gap "
                            f"{g.gap:.3f} nats (step {g.position + 1});")
            print(" ".join(line), f"vLLM top-1 log-probs {[round(max(x.values()), 2) for x in tops[:3]]}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
