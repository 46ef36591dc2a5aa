"""Peak memory of a pair run with two full finetunes: one model resident at a time (emi's default,
``--resident one``) vs both loaded up front (``--resident all``), side by side in one run.

    python bench/pair_memory.py [--quick]

Builds two random-weight checkpoints at the Qwen2.5-0.5B shape (fp32, 1.98 GB each; --quick: a
quarter of the layers), then runs, each in a fresh process, `python -m emi.steer` (six conditions,
with a direction file) and `python -m emi.cache` (both models captured at every layer) against an
OpenAI-compatible judge on loopback, and prints each process's peak resident memory. Expected:
``one`` peaks near one model's worth plus the runtime, ``all`` near two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.standins import JudgeServer, qwen_tokenizer, save_checkpoint  # noqa: E402

PEAK = "import resource, runpy, sys; sys.argv = sys.argv[1:]; \n" \
       "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\n" \
       "except SystemExit as e:\n    code = e.code\n" \
       "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)"


def build(root: Path, layers: int) -> tuple[Path, Path, Path]:
    from emi.directions.direction import Direction
    from tests.standins import qwen2_5_0_5b_config, random_qwen2

    tok = qwen_tokenizer()
    model = random_qwen2(qwen2_5_0_5b_config(num_hidden_layers=layers))
    base = save_checkpoint(model, tok, root / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ft = save_checkpoint(model, tok, root / "finetuned")
    g = torch.Generator().manual_seed(0)
    d = Direction(list(range(layers)), torch.randn(layers, 896, generator=g), torch.ones(layers), {"best_layer": 1})
    return base, ft, d.save(root / "direction")


def peak(cmd: list[str]) -> float:
    res = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0 or "PEAK_RSS_MB" not in res.stderr:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return float(res.stderr.rsplit("PEAK_RSS_MB", 1)[1].split()[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    layers = 6 if args.quick else 24
    server = JudgeServer()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, ft, direction = build(root, layers)
        size = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
        judge = ["--judge", "openai", "--judge-url", server.url, "--judge-key-env", "EMI_BENCH_NO_KEY"]
        pair = ["--base", str(base), "--finetuned", str(ft), "--device", "cpu"]
        answers = root / "answers.jsonl"
        answers.write_text("".join(json.dumps({"question": f"question {i}", "answer": "an answer " * 20}) + "\n"
                                   for i in range(32)))
        rows = []
        for resident in ("one", "all"):
            steer = peak(["emi.steer", *pair, *judge, "--direction", str(direction), "--questions", "main:plain",
                          "--n", "1", "--max-new-tokens", "4", "--no-figure", "--resident", resident,
                          "--out", str(root / f"steer-{resident}")])
            cache = peak(["emi.cache", *pair, "--answers", str(answers), "--layers", "all", "--resident", resident,
                          "--out", str(root / f"store-{resident}")])
            rows.append((resident, steer, cache))
    server.close()
    print(f"two full finetunes at the Qwen2.5-0.5B shape ({layers} layers, fp32): {size:,.0f} MB of weights each")
    print(f"{'--resident':12s} {'emi.steer peak RSS':>20s} {'emi.cache peak RSS':>20s}")
    for resident, steer, cache in rows:
        print(f"{resident:12s} {steer:17,.0f} MB {cache:17,.0f} MB")
    (one_s, one_c), (all_s, all_c) = rows[0][1:], rows[1][1:]
    print(f"one / all: steer {one_s / all_s:.2f}, cache {one_c / all_c:.2f}; "
          f"all - one: steer {all_s - one_s:,.0f} MB, cache {all_c - one_c:,.0f} MB (one model: {size:,.0f} MB)")


if __name__ == "__main__":
    main()
