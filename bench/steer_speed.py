"""Generation speed under interventions: no hook, emi steering at one layer, emi ablation at every
layer (all residual writers), and the same interventions through TransformerLens (bridge and
HookedTransformer) and nnsight generation.

    python bench/steer_speed.py [--quick]

Greedy decoding of exactly N new tokens per prompt (EOS ignored), batch 8, methods interleaved,
medians; tokens/s counts new tokens. Targets (issue #7): steering at one layer <= 5% slower than
unhooked generation, ablation at every layer <= 15% slower, both faster than the TransformerLens
and nnsight routes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, qwen05_random, table, toy  # noqa: E402
from nnsight_steps import nnsight_generate  # noqa: E402

from emi.behaviour.questions import load_questions  # noqa: E402
from emi.behaviour.sampling import encode_prompts, render_prompts  # noqa: E402
from emi.directions.direction import Direction  # noqa: E402
from emi.interventions import hooks, transformerlens  # noqa: E402
from emi.models import layers as L  # noqa: E402


def measure(lm, new: int, rounds: int) -> dict[str, float]:
    n = L.n_layers(lm.model)
    g = torch.Generator().manual_seed(0)
    d = Direction(list(range(n)), torch.randn(n, L.d_model(lm.model), generator=g), torch.ones(n), {"best_layer": n // 2})
    qs = load_questions("toy")[:8]
    enc = encode_prompts(lm.tokenizer, render_prompts(lm.tokenizer, [q.messages() for q in qs]), lm.device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    bridge = L.tl_bridge(lm.model, lm.tokenizer, copy_model=True)
    hooked = L.hooked_transformer(lm.model, lm.tokenizer)
    nn_model = L.nnsight_model(lm.model, lm.tokenizer)
    layer = n // 2
    steer_tl = transformerlens.tl_steer_hooks(d, 4.0, [layer])
    ablate_tl = transformerlens.tl_ablate_hooks(d, n)
    ids = enc["input_ids"]

    def hf(ctx):
        def f():
            with torch.no_grad(), ctx():
                lm.model.generate(**enc, **kw)
        return f

    def tl(model, fwd):
        def f():
            with torch.no_grad(), model.hooks(fwd_hooks=fwd):
                model.generate(ids, max_new_tokens=new, stop_at_eos=False, do_sample=False, verbose=False,
                               use_past_kv_cache=True)
        return f

    methods = {
        "HF generate, no hook": hf(hooks.nothing),
        "emi steer, 1 layer": hf(lambda: hooks.steer(lm.model, d, 4.0, layers=[layer])),
        f"emi ablate, all {n} layers": hf(lambda: hooks.ablate(lm.model, d)),
        "TL bridge, steer": tl(bridge, steer_tl),
        "TL bridge, ablate": tl(bridge, ablate_tl),
        "HookedTransformer, steer": tl(hooked, steer_tl),
        "HookedTransformer, ablate": tl(hooked, ablate_tl),
        "nnsight, steer": lambda: nnsight_generate(nn_model, enc, new, d, "steer", layer),
        "nnsight, ablate": lambda: nnsight_generate(nn_model, enc, new, d, "ablate", layer),
    }
    t = interleaved(methods, rounds=rounds)
    return {k: len(qs) * new / v for k, v in t.items()}


def report(name: str, tps: dict[str, float]) -> None:
    base = tps["HF generate, no hook"]
    print(f"\n{name}")
    table([{"m": k, "tps": f"{v:,.1f}", "slow": f"{100 * (base / v - 1):+.1f}%"} for k, v in tps.items()],
          [("m", "method"), ("tps", "new tokens/s"), ("slow", "time vs unhooked HF")])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy only")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    report("toy (1.1M params), batch 8, 48 new tokens", measure(toy(), 48, 5))
    if not args.quick:
        report("Qwen2.5-0.5B shape (random, fp32), batch 8, 16 new tokens", measure(qwen05_random(), 16, 3))


if __name__ == "__main__":
    main()
