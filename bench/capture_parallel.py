"""Data-parallel capture: `python -m emi.cache` in one process vs `torchrun --nproc-per-node 2`,
side by side in one run, on the same texts, with the stores checked byte for byte.

    python bench/capture_parallel.py [--quick] [--rounds 2]

Builds a pair of two full finetunes at the Qwen2.5-0.5B width with random weights (fp32, 12 layers; --quick:
4 layers), writes 64 synthetic answers of ~200 tokens, and captures both models at every layer
over all positions, alternating the two commands (each in fresh processes, model loading
included). Prints wall-clock seconds (median) and the ratio. On CPU the two processes share the
machine's cores (each gets OMP_NUM_THREADS cores / 2); on N GPUs each process has its own GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.standins import qwen2_5_0_5b_config, qwen_tokenizer, random_qwen2, save_checkpoint  # noqa: E402


def build(root: Path, layers: int) -> tuple[Path, Path, Path]:
    tok = qwen_tokenizer()
    model = random_qwen2(qwen2_5_0_5b_config(num_hidden_layers=layers, vocab_size=len(tok)))
    base = save_checkpoint(model, tok, root / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * p.std() * torch.randn_like(p))
    ft = save_checkpoint(model, tok, root / "finetuned")
    rng = random.Random(0)
    words = [w for w in tok.get_vocab() if w.isalpha()][:400]
    answers = root / "answers.jsonl"
    with open(answers, "w") as fh:
        for i in range(64):
            fh.write(json.dumps({"question": f"question {i} ?", "answer": " ".join(rng.choices(words, k=200)),
                                 "id": f"q{i}", "key": f"q{i}#0", "sample": 0}) + "\n")
    return base, ft, answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, ft, answers = build(root, 4 if a.quick else 12)
        common = ["--base", str(base), "--finetuned", str(ft), "--answers", str(answers), "--layers", "all",
                  "--positions", "all", "--shard-texts", "8", "--device", "cpu", "--judge", "none"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        runs = {"1 process": ([sys.executable, "-m", "emi.cache"], {"OMP_NUM_THREADS": str(cores)}),
                "2 processes (torchrun)": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            "--nproc-per-node", "2", "-m", "emi.cache"],
                                           {"OMP_NUM_THREADS": str(max(1, cores // 2))})}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.rounds):
            for name, (cmd, extra) in runs.items():
                out = root / f"store-{name[0]}"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                done = subprocess.run([*cmd, *common, "--out", str(out)], env={**env, **extra}, capture_output=True,
                                      text=True)
                times[name].append(time.perf_counter() - t0)
                if done.returncode:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        same = all((root / "store-1" / f.relative_to(root / "store-2")).read_bytes() == f.read_bytes()
                   for f in (root / "store-2").rglob("*") if f.is_file() and f.name != ".emi.lock")
    med = {k: statistics.median(v) for k, v in times.items()}
    one = med["1 process"]
    print(f"capture of 64 texts x ~220 tokens, 2 models, every layer ({'4' if a.quick else '12'} layers at the "
          f"Qwen2.5-0.5B width), {cores} CPU cores, median of {a.rounds}")
    for k, v in med.items():
        print(f"  {k:24s} {v:7.1f} s   {one / v:4.2f}x")
    print(f"  stores byte-identical: {same}")


if __name__ == "__main__":
    main()
