"""python -m emi.export: write a checkpoint with the persona direction ablated from its weights.

Ablating a direction from every residual writer is exactly a weight edit (emi.hooks.orthogonalize:
embedding rows, attention and MLP output projections, every expert's, with the unembedding kept),
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
from typing import Any

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
    return _export(args, spec, out)


def _export(args, spec, out: Path) -> int:  # noqa: ANN001
    from emi.experiments import pair_direction

    roles = ("base", "finetuned") if args.role != "control" else ("base", "finetuned", "control")
    pair = cli.load_pair_from_args(args, roles)
    direction, source = pair_direction(pair, args.direction, args.direction_method, root=args.root,
                                       log=lambda m: print(m, file=sys.stderr))
    layer = direction.best_layer if args.layer is None else args.layer
    lm = pair[args.role]
    adapter = write_ablated(lm, direction, layer, out, {"role": args.role, "source": source})
    print(f"exported {spec.name} {args.role} with the direction ablated ({direction.meta.get('method')}, layer "
          f"{layer}) -> {out}" + (" (full weights, and adapter/)" if adapter else ""))
    print(f"serve it as it is (e.g. vllm serve {out}); what was edited: {out / 'export.json'}", file=sys.stderr)
    return 0


def write_ablated(lm: Any, direction: Any, layer: int, out: Path, provenance: dict[str, Any]) -> bool:
    """Write ``lm`` with ``direction`` (its ``layer`` vector) ablated from its weights to ``out``
    (a new folder, written whole or not at all); True when ``lm`` is a LoRA role, whose edited
    adapter goes to ``out/adapter`` beside the merged full weights."""
    import shutil
    import tempfile

    from emi import layers as L
    from emi.atomic import write_json
    from emi.hooks import orthogonalize

    with lm.active() as model:
        edited = orthogonalize(model, direction, source_layer=layer)
    peft = hasattr(edited, "peft_config")
    adapter = peft and lm.adapter_enabled is not False
    out.parent.mkdir(parents=True, exist_ok=True)
    # written into a temporary sibling and renamed at the end: never a half-written export
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if adapter:
            for name in [n for n in edited.peft_config if n != edited.active_adapter]:
                edited.delete_adapter(name)  # other roles' adapters on a shared base are not this model
            edited.save_pretrained(tmp / "adapter")
            full = edited.merge_and_unload()
        else:
            full = edited.unload() if peft else L.unwrap(edited)  # a LoRA pair's base: its own weights
        full.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        write_json(tmp / "export.json", {
            "edit": "orthogonalize: the direction removed from every residual writer (emi.hooks.orthogonalize)",
            **provenance, "model": lm.identity(), "direction": direction.summary(), "source_layer": layer,
            "adapter": "adapter/: apply it to the base exported with --role base" if adapter else None})
        if out.is_dir():
            out.rmdir()  # empty (checked by the caller); a folder that filled up meanwhile makes rename fail
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return adapter


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
