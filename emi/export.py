"""python -m emi.export: write a checkpoint with the persona direction ablated from its weights.

Ablating a direction from every residual writer is exactly a weight edit (emi.interventions.weights.orthogonalize:
embedding rows, attention and MLP output projections, every expert's, Qwen4-Exp's PLE value projection,
with the unembedding kept; a Qwen4-Exp whose PLE convolution has non-zero weights is refused, since no
weight edit equals ablation there),
so the ablated model is an ordinary checkpoint that any server loads unchanged (vLLM, SGLang,
`transformers serve`) to sample the "finetuned - persona" condition at scale.

  python -m emi.export --out ortho-ft                       # the default pair's finetune, its direction
  python -m emi.export --base B --finetuned F --direction d.safetensors --out ortho-ft
  python -m emi.export --base B --finetuned ADAPTER --role base --out ortho-base   # a LoRA organism ...
  python -m emi.export --base B --finetuned ADAPTER --out ortho-ft                 # ... and its adapter

Writes full weights (a LoRA role: the adapter merged into the edited base) with its tokenizer and
export.json (what was edited, with which direction); for a LoRA role also ``adapter/``, the
adapter with its output matrices edited the same way, which applied to the edited base
(``--role base``) gives the same model. The direction comes as in emi.steer (--direction, the
pair's shipped one, or extracted on first use).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emi import cli


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.export", __doc__)
    cli.add_pair_args(p)
    p.add_argument("--role", default="finetuned", choices=["base", "finetuned", "control"],
                   help="which model to edit (default finetuned)")
    p.add_argument("--direction", default=None, help="a direction file (default: the pair's, as emi.steer finds it)")
    p.add_argument("--direction-method", default="model-diff", choices=["model-diff", "contrast", "mean-diff"],
                   help="how to extract the direction on first use (default model-diff)")
    p.add_argument("--layer", type=int, default=None, help="which layer's vector to ablate (default: its best layer)")
    p.add_argument("--root", default=None, help="where extracted directions are cached (default activations/)")
    p.add_argument("--out", required=True, help="output folder for the edited checkpoint")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise cli.ConfigError(f"--out {str(out)!r} exists and is not an empty folder; give a new folder")
    spec = cli.pair_spec(args)
    plan = cli.plan_from_args(args, ("base", "finetuned", args.role), spec=spec)  # configs only: no weights yet
    if args.direction:  # a NaN, infinite, all-zero or wrong-width direction stops before any model loads
        from emi.directions.direction import check_fits_pair
        check_fits_pair(args.direction, plan)
    if args.layer is not None:
        plan.layers(str(args.layer), "--layer")
    return _export(args, spec, out)


def _export(args, spec, out: Path) -> int:  # noqa: ANN001
    from emi.core.atomic import readable
    from emi.experiments.persona import pair_direction
    from emi.interventions.weights import check_orthogonalizable, write_ablated

    roles = ("base", "finetuned") if args.role != "control" else ("base", "finetuned", "control")
    pair = cli.load_pair_from_args(args, roles)
    with pair[args.role].active() as model:
        check_orthogonalizable(model)  # before a direction is extracted
    direction, source = pair_direction(pair, args.direction, args.direction_method, root=args.root,
                                       log=lambda m: print(m, file=sys.stderr))
    layer = direction.best_layer if args.layer is None else args.layer
    lm = pair[args.role]
    adapter = write_ablated(lm, direction, layer, out, {"role": args.role, "source": source})
    readable(out)  # a server running as another user reads it
    print(f"exported {spec.name} {args.role} with the direction ablated ({direction.meta.get('method')}, layer "
          f"{direction.layer_label() if args.layer is None else layer}) -> {out}" + (" (full weights, and adapter/)" if adapter else ""))
    print(f"serve it as it is (e.g. vllm serve {out}); what was edited: {out / 'export.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
