"""python -m emi.steer: does removing the misaligned-persona direction suppress emergent
misalignment, and does adding it create it?

Runs, on one pair (default: the embedded toy organism), and prints with 95% CIs:
  base                     the base model
  finetuned                the finetuned (emergently misaligned) model
  finetuned - persona      the finetuned model with the direction ablated at every layer
  finetuned - random       ... a same-norm random direction ablated instead (control)
  base + A persona         the base model steered by +alpha along the direction
  base + A random          ... a same-norm random direction (control)
next to the judge-free log-prob metric P(misaligned answer), and writes answers.jsonl,
judgements.jsonl, results.jsonl (one tidy row per condition), table.csv and figure.html/.png
under --out. Several alphas (--alpha 2,4,8), --sweep-layers and --targets base,finetuned make
sweeps. The direction comes from --direction, the pair's shipped one (the toy), or is extracted
on first use and cached (activations/<pair>-<method>/). Re-running the same command resumes.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from emi import cli, jsonl
from emi.store import write_atomic


def fmt_rate(row: dict, key: str) -> str:
    if not row[f"{key}_n"]:
        return "n/a (no answers)"
    return f"{100 * row[f'{key}_rate']:5.1f}% [{100 * row[f'{key}_lo']:4.1f}, {100 * row[f'{key}_hi']:4.1f}]"


def cache_name(spec) -> str:  # noqa: ANN001
    """Named pairs by name; a command-line pair by a hash of its checkpoints."""
    if spec.name != "custom":
        return spec.name
    import hashlib
    import json
    from dataclasses import asdict

    return "custom-" + hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:10]


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser("python -m emi.steer", __doc__)
    cli.add_pair_args(p)
    cli.add_sampling_args(p, n=25)
    cli.add_judge_args(p)
    g = p.add_argument_group("intervention")
    g.add_argument("--alpha", type=cli.floats("--alpha"), default=[8.0],
                   help="steering strength(s), comma-separated for a sweep (default 8); absolute residual "
                        "units, or fractions of the layer's typical residual norm with --relative; negative "
                        "values need the = form: --alpha=-8,8")
    g.add_argument("--relative", action="store_true", help="alpha is relative to the residual norm at the layer")
    g.add_argument("--sweep-layers", action="store_true",
                   help="steer each of --layers on its own (alpha x layer) instead of all at once")
    g.add_argument("--targets", default="base",
                   help="models to steer: base, finetuned or both (e.g. base,finetuned with a negative alpha)")
    g.add_argument("--layers", default=None, help="steering layer(s) (default: the direction's best layer)")
    g.add_argument("--ablate-layers", default=None,
                   help="ablate at these block outputs only (default: every residual writer, all layers)")
    g.add_argument("--positions", default="all", choices=["all", "prompt", "generated"],
                   help="which tokens are steered (default all)")
    g.add_argument("--direction", default=None, help="a direction file from python -m emi.extract")
    g.add_argument("--direction-method", default="model-diff", choices=["model-diff", "contrast", "mean-diff"],
                   help="how to extract the direction on first use: model-diff (default; finetuned minus base "
                        "at the last prompt token), contrast (evil minus helpful persona at that token), "
                        "mean-diff (misaligned minus aligned answers over response tokens, the published recipe)")
    g.add_argument("--random-seed", type=int, default=0, help="seed of the random control direction")
    g.add_argument("--out", default=None, help="output folder (default runs/steer-<pair>)")
    g.add_argument("--no-figure", action="store_true", help="skip writing the figure")
    args = p.parse_args(argv)

    from emi import layers as L
    from emi.directions import Direction
    from emi.experiments import ensure_direction, run, standard_conditions
    from emi.questions import load_questions

    spec = cli.pair_spec(args)
    toy = spec.questions == "toy"
    questions = load_questions(args.questions or spec.questions, ids=args.ids)
    cli.warn_question_mismatch(spec, args.questions)
    judge = cli.make_judge_from_args(args, spec.judge)
    cfg = cli.sampling_config(args, toy)
    pair = cli.load_pair_from_args(args, ("base", "finetuned"))
    n_layers = pair.base.n_layers
    if args.direction:
        direction = Direction.load(args.direction)
    elif spec.direction and args.direction_method == "model-diff":
        direction = Direction.load(spec.direction)
        print(f"direction: the pair's shipped {direction.meta.get('method')} direction ({spec.direction})",
              file=sys.stderr)
    else:
        cache = Path("activations") / f"{cache_name(spec)}-{args.direction_method}"
        print(f"direction: {cache}/direction.safetensors (extracting on first use)", file=sys.stderr)
        direction = ensure_direction(pair, toy, cache, args.direction_method, cfg, judge)
    direction.check_fits(pair.base.d_model, n_layers, f"pair {spec.name!r}")
    steer_layers = L.resolve_layers(args.layers, n_layers) if args.layers else [direction.best_layer]
    ablate_layers = L.resolve_layers(args.ablate_layers, n_layers) if args.ablate_layers else None
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    bad = [t for t in targets if t not in ("base", "finetuned")]
    if bad:
        raise cli.ConfigError(f"unknown --targets {', '.join(bad)}; use base, finetuned or base,finetuned")
    conditions = standard_conditions(direction, args.alpha, steer_layers, args.relative, args.positions,
                                     ablate_layers=ablate_layers, sweep_layers=args.sweep_layers, targets=targets)
    out = Path(args.out or f"runs/steer-{spec.name}")
    out.mkdir(parents=True, exist_ok=True)
    rows = run(pair, conditions, direction, questions, cfg, judge, out, args.random_seed)
    for r in rows:
        r["pair"] = spec.name
    jsonl.write(out / "results.jsonl", rows)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    write_atomic(out / "table.csv", write_csv)
    print(f"pair {spec.name} | direction {direction.meta.get('method')} @ layer {direction.best_layer} "
          f"(|d| = {direction.norms[direction.layers.index(direction.best_layer)]:.2f}, residual norm "
          f"{direction.norm_at(direction.best_layer):.2f}) | steering layers {steer_layers} | "
          f"{len(questions)} questions x {cfg.n} samples, judge {judge.name}, seed {cfg.seed}")
    ft = next(r for r in rows if r["condition"] == "finetuned")
    table = []
    for r in rows:
        rel = ""
        if r["intervention"] == "ablate" and ft["em_rate"] > 0:
            rel = f"{100 * (r['em_rate'] - ft['em_rate']) / ft['em_rate']:+.0f}% vs finetuned"
        table.append({"condition": r["condition"], "em": fmt_rate(r, "em"), "k": f"{r['em_k']}/{r['em_n']}",
                      "coh": fmt_rate(r, "coherence"), "rel": rel})
    cli.print_table(table, [("condition", "condition"), ("em", "EM rate (95% CI)"), ("k", "misaligned/coherent"),
                            ("coh", "coherent (95% CI)"), ("rel", "change")])
    if not args.no_figure:
        from emi.figures import export, steer_summary

        written = export(steer_summary(rows), out / "figure", formats=("html", "png"))
        print(f"figure: {', '.join(str(w) for w in written)}", file=sys.stderr)
    print(f"wrote {out}/results.jsonl, table.csv, answers.jsonl, judgements.jsonl", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
