"""Does vLLM's CPU build serve a Qwen3-Next stand-in? Builds one (bf16, attention heads of 32,
linear-attention heads of LINEAR, default 128), starts vLLM on it through emi's launcher and prints
one greedy completion's token ids beside in-process generate's (or the server's error). It sets
EMI_VLLM_HYBRID=1: emi refuses these models on vLLM otherwise (emi.engines.vllm.launcher.check_servable).

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 .venv/bin/python bench/vllm_gdn_probe.py [LINEAR] [--tied]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

from emi.engines.vllm.launcher import Launcher, vllm_python
from tests.standins import build_model, qwen_tokenizer, save_checkpoint


def main() -> None:
    os.environ.setdefault("EMI_VLLM_HYBRID", "1")
    linear = int(next((a for a in sys.argv[1:] if a.isdigit()), "128"))
    tok = qwen_tokenizer()
    root = Path(tempfile.mkdtemp())
    m = build_model("qwen3_next", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, head_dim=32,
                    linear_key_head_dim=linear, linear_value_head_dim=linear,
                    tie_word_embeddings="--tied" in sys.argv).to(torch.bfloat16)
    ck = save_checkpoint(m, tok, root / "qwen3_next-bf16")
    t = time.time()
    s = Launcher(vllm_python(), "bfloat16", log_dir=root / "logs", startup_timeout=1200).checked().start(str(ck))
    print(f"started in {time.time() - t:.0f} s")
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                       tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        r = requests.post(f"{s.url}/v1/completions", json={"model": str(ck), "prompt": ids, "max_tokens": 8,
                                                           "temperature": 0, "return_token_ids": True},
                          timeout=600).json()
        print("vllm      ", r["choices"][0].get("token_ids") if "choices" in r else f"{r} ({s.cause()})")
        with torch.no_grad():
            out = m.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        print("in-process", out[0, len(ids):].tolist())
    finally:
        s.stop()


if __name__ == "__main__":
    main()
