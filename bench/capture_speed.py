"""Capture speed and memory: emi's capture (with disk writes) vs a full forward pass with logits,
TransformerLens run_with_cache and an nnsight trace saving the same layers.

    python bench/capture_speed.py [--quick]

TransformerLens appears twice: the TransformerBridge it recommends (HF modules underneath) and the
legacy HookedTransformer (its own implementation, built offline by emi.models.layers.hooked_transformer).
Prints tokens/s and ratios (measured side by side, methods interleaved, medians), at the real
Qwen2.5-0.5B shape (random weights, fp32) and on the toy, at batch 8 x 128 and 2 x 16; then peak
memory of emi's capture at two store sizes (separate processes). Targets (issue #5): emi capture
of all layers >= 1.25x a full forward pass at 8 x 128; >= 1.4x TransformerLens and >= 1.3x
nnsight there; >= 5x both at 2 x 16; peak memory flat in the number of tokens cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, qwen05_random, random_batch, table, toy  # noqa: E402

from emi.activations.capture import capture_models  # noqa: E402
from emi.activations.plan import CaptureSpec  # noqa: E402
from emi.activations.readers import nnsight_reader, tl_reader  # noqa: E402
from emi.models import layers as L  # noqa: E402


def measure(lm, batch: int, seq: int, n_batches: int, rounds: int) -> dict[str, float]:
    n = L.n_layers(lm.model)
    ids = [random_batch(batch, seq, seed=i) for i in range(n_batches)]
    mask = torch.ones(batch, seq, dtype=torch.long)
    items = [{"input_ids": row.tolist()} for b in ids for row in b]
    tmp = tempfile.mkdtemp(prefix="emi-bench-")
    bridge = L.tl_bridge(lm.model, lm.tokenizer, copy_model=True)
    hooked = L.hooked_transformer(lm.model, lm.tokenizer)
    nn_model = L.nnsight_model(lm.model, lm.tokenizer)
    tl_all = tl_reader(bridge, range(n))
    names = [L.tl_hook_name(x) for x in range(n)]
    nn_all = nnsight_reader(nn_model, range(n))

    def full():
        with torch.no_grad():
            for b in ids:
                lm.model(input_ids=b, attention_mask=mask).logits  # noqa: B018

    def emi_all():  # 64 MB shards: a long capture writes shard k while computing shard k+1
        capture_models({"m": lm}, items, Path(tmp) / "all", CaptureSpec(positions="all", batch_size=batch, shard_mb=64),
                       overwrite=True, progress=False)

    def emi_half():
        capture_models({"m": lm}, items, Path(tmp) / "half",
                       CaptureSpec(tuple(range(n // 2)), positions="all", batch_size=batch, shard_mb=64),
                       overwrite=True, progress=False)

    def tl_cache():  # as users call it: the whole model, the layers' hooks cached
        with torch.no_grad():
            for b in ids:
                bridge.run_with_cache(b, attention_mask=mask, names_filter=names)

    def ht_cache():  # the legacy HookedTransformer, as issue #5 measured it
        with torch.no_grad():
            for b in ids:
                hooked.run_with_cache(b, attention_mask=mask, names_filter=names)

    def tl_stop():  # emi's TransformerLens reader (stops after the last layer)
        for b in ids:
            tl_all(b, mask)

    def nn_trace():  # as users write it: a trace saving every layer's output
        for b in ids:
            with torch.no_grad(), nn_model.trace({"input_ids": b, "attention_mask": mask}):
                saved = [nn_model.model.layers[x].output.save() for x in range(n)]  # noqa: F841

    def nn_stop():  # emi's nnsight reader (stops after the last layer)
        for b in ids:
            nn_all(b, mask)

    t = interleaved({"full forward (logits)": full, "emi capture, all layers + disk (64 MB shards)": emi_all,
                     f"emi capture, layers 0-{n // 2 - 1} + disk": emi_half,
                     "TransformerLens (bridge) run_with_cache": tl_cache, "TransformerLens (bridge), emi reader": tl_stop,
                     "HookedTransformer run_with_cache": ht_cache,
                     "nnsight trace": nn_trace, "nnsight, emi reader": nn_stop}, rounds=rounds)
    return {k: batch * seq * n_batches / v for k, v in t.items()}


def report(name: str, tps: dict[str, float]) -> None:
    full = tps["full forward (logits)"]
    emi = tps["emi capture, all layers + disk (64 MB shards)"]
    print(f"\n{name}")
    table([{"method": k, "tps": f"{v:,.0f}", "vs_full": f"{v / full:.2f}x", "emi_vs": f"{emi / v:.2f}x"}
           for k, v in tps.items()],
          [("method", "method"), ("tps", "tokens/s"), ("vs_full", "vs full forward"),
           ("emi_vs", "emi all-layer capture is")])


MEM_SCRIPT = """
import json, sys, tempfile, threading, time, torch
sys.path.insert(0, {bench!r})
torch.set_num_threads({threads})
from common import {builder}, random_batch
from emi.activations.capture import capture_models
from emi.activations.plan import CaptureSpec

def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20

lm = {builder}()
items = [{{"input_ids": r.tolist()}} for i in range({n}) for r in random_batch(8, 128, seed=i)]
capture_models({{"m": lm}}, items[:8], tempfile.mkdtemp() + "/w", CaptureSpec(positions="all"), progress=False)  # warm-up
before, peak, done = rss_mb(), [0.0], [False]

def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.01)

t = threading.Thread(target=sample)
t.start()
st = capture_models({{"m": lm}}, items, tempfile.mkdtemp() + "/s",
                    CaptureSpec(positions="all", batch_size=8, shard_mb=64), progress=False)
done[0] = True
t.join()
size = sum(s["bytes"] for s in st.manifest["shards"]) / 2**20
print(json.dumps({{"before_mb": before, "peak_mb": peak[0], "tokens": {n} * 8 * 128, "store_mb": size}}))
"""


def memory(builder: str, sizes: tuple[int, int]) -> list[dict]:
    out = []
    for n in sizes:
        code = MEM_SCRIPT.format(bench=str(Path(__file__).parent), builder=builder, n=n, threads=torch.get_num_threads())
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode:
            raise SystemExit(r.stderr)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy only, fewer rounds")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    lm_toy = toy()
    report("toy (1.1M params), batch 8 x 128", measure(lm_toy, 8, 128, 4, 5))
    report("toy, batch 2 x 16", measure(lm_toy, 2, 16, 8, 7))
    if not args.quick:
        big = qwen05_random()
        report("Qwen2.5-0.5B shape (random, fp32), batch 8 x 128", measure(big, 8, 128, 2, 3))
        report("Qwen2.5-0.5B shape, batch 2 x 16", measure(big, 2, 16, 4, 5))
        del big
    for builder, sizes in (("toy", (128, 512)),) + (() if args.quick else (("qwen05_random", (4, 12)),)):
        m = memory(builder, sizes)
        print(f"\npeak memory of emi capture ({builder}, all layers, 64 MB shards)")
        table([{"tokens": f"{r['tokens']:,}", "store": f"{r['store_mb']:.0f} MB", "before": f"{r['before_mb']:.0f} MB",
                "peak": f"{r['peak_mb']:.0f} MB", "extra": f"{r['peak_mb'] - r['before_mb']:.0f} MB"} for r in m],
              [("tokens", "tokens cached"), ("store", "store on disk"), ("before", "RSS before"),
               ("peak", "peak RSS during capture"), ("extra", "capture's extra")])


if __name__ == "__main__":
    main()
