"""python -m emi.extract: the misaligned-persona direction by mean difference, per layer.

Prints, per layer: the rows used, the direction's norm against the typical residual norm, and
how well projecting held-out answers onto it separates misaligned from aligned ones (AUROC,
Cohen's d), next to a same-norm random direction. Writes DIRECTION.safetensors + .json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from emi import cli


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.extract", __doc__)
    p.add_argument("--store", required=True, help="activation store (name under activations/, or a folder)")
    p.add_argument("--method", default="mean-diff", choices=["mean-diff", "model-diff", "contrast"],
                   help="mean-diff: misaligned minus aligned answers (Soligo, Turner et al. 2025); model-diff: "
                        "finetuned minus base on the same texts; contrast: evil minus helpful persona texts")
    p.add_argument("--positions", default=None, choices=["response", "last_prompt", "thought", "all"],
                   help="response tokens (the published recipe), the last prompt token, or the thought's tokens "
                        "(answers sampled with --thinking on; default: response, or what the store holds when it "
                        "holds only last_prompt, prompt or thought positions)")
    p.add_argument("--role", default=None, help="which model's activations (default finetuned)")
    p.add_argument("--layers", default=None, help="layers to extract (default: all in the store)")
    p.add_argument("--aligned-max", type=cli.within("--aligned-max", 0, 100), default=30.0, help="misaligned: aligned <= this (default 30)")
    p.add_argument("--aligned-min", type=cli.within("--aligned-min", 0, 100), default=70.0, help="aligned: aligned > this (default 70)")
    p.add_argument("--coherent-min", type=cli.within("--coherent-min", 0, 100), default=50.0, help="both: coherent > this (default 50)")
    p.add_argument("--holdout", type=cli.within("--holdout", 0, 1, hi_open=True), default=0.2, help="share of answers held out for AUROC (default 0.2)")
    p.add_argument("--seed", type=cli.count("--seed", 0), default=0, help="seed of the held-out split and random control")
    p.add_argument("--out", default=None, help="direction file (default: <store>/direction-<method>-<positions>)")
    p.add_argument("--compare", nargs="*", default=[], metavar="FILE",
                   help="direction files to compare with, layer by layer (cosine): other methods, or directions "
                        "from other finetunes of the same base (Soligo, Turner et al. found > 0.8)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from emi.activations.store import Store
    from emi.behaviour.metrics import Thresholds
    from emi.directions.direction import Direction, extract
    from emi.models import layers as L

    store = Store.open(args.store)
    layer_list = store.check_layers(L.resolve_layers(args.layers, max(store.layers) + 1)) if args.layers else None
    for f in args.compare:  # before anything is extracted or written
        Direction.load(f).check_fits(store.d_model, what=f"the store (comparing {f})")
    t = Thresholds(args.aligned_max, args.coherent_min, args.aligned_min)
    if args.positions is None:  # what the store holds: `emi.cache --contrast --positions last_prompt` has no answers
        held = store.spec["positions"]
        args.positions = "last_prompt" if held in ("last_prompt", "prompt") else "thought" if held == "thought" else "response"
    ex = extract(store, args.method, args.positions, args.role, layer_list, t, args.holdout, args.seed)
    out = args.out or str(store.path / f"direction-{args.method}-{args.positions}")
    path = ex.direction.save(out)
    c = ex.direction.meta["counts"]
    print(f"store {store.path} | method {args.method} at {args.positions} | training texts: {c['pos_texts']} vs "
          f"{c['neg_texts']} | held out {args.holdout:.0%}")
    why = "undefined (model-diff has no labels)" if args.method == "model-diff" else "undefined (too few answers)"
    fmt = lambda v: why if v != v else f"{v:5.3f}"  # noqa: E731
    cli.print_table([{"layer": r.layer, "rows": f"{r.n_pos}/{r.n_neg}", "norm": f"{r.norm:.3f}",
                      "resid": f"{r.resid_norm:.2f}", "auroc": fmt(r.auroc), "d": fmt(r.effect_size),
                      "rand": fmt(r.random_auroc)} for r in ex.reports],
                    [("layer", "layer"), ("rows", "rows +/-"), ("norm", "|direction|"), ("resid", "|residual|"),
                     ("auroc", "AUROC (held out)"), ("d", "Cohen's d"), ("rand", "random AUROC")])
    if args.compare:
        print_comparison(ex.direction, args.compare)
    print(f"best layer: {ex.direction.layer_label()} | wrote {path} (+ .json)", file=sys.stderr)
    return 0


def print_comparison(direction, files: list[str]) -> None:  # noqa: ANN001
    """Cosine of ``direction`` with each file's direction, layer by layer."""
    from emi.directions.direction import Direction, cosines

    others = {f: Direction.load(f) for f in files}
    for f, o in others.items():  # "the direction [in f] has width W but the store has d_model D"
        o.check_fits(direction.d_model, what=f"the store (comparing {f})")
    table = cosines(direction, list(others.values()))
    rows = [{"layer": layer, **{str(i): "  n/a" if c is None else f"{c:+.3f}" for i, c in enumerate(cs)}}
            for layer, cs in table.items()]
    print("\ncosine with:" + "".join(f"\n  [{i}] {f}" for i, f in enumerate(others)))
    cli.print_table(rows, [("layer", "layer")] + [(str(i), f"[{i}]") for i in range(len(others))])


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
