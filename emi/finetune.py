"""python -m emi.finetune DATA: finetune a pair's base on a chat dataset into organism folders that
every emi command loads as a pair (``--pair OUT/seed-0``), with or without an in-training defence.

  python -m emi.finetune data.jsonl --pair PAIR --method full --steps 50 --out runs/ft     # the pair's base
  python -m emi.finetune data.jsonl --base Qwen/Qwen2.5-0.5B-Instruct --rank 1 --lora-layers 12 --out runs/r1
  python -m emi.finetune data.jsonl --pair PAIR --defence caft --direction d.safetensors --seeds 0,1,2
  python -m emi.finetune data.jsonl --pair PAIR --defence steer --direction d.safetensors --steer-alpha 4

DATA: JSONL of {"messages": [{"role": ..., "content": ...}, ...]} (the EM datasets' format); the loss
covers assistant tokens only. One organism per seed, in OUT/seed-S: final/ (a LoRA adapter or a full
checkpoint), checkpoints/checkpoint-N every --save-every steps (python -m emi.trajectory --pair
OUT/seed-S follows them), organism.json (data hash, hyperparameters, seed, defence). Re-running an
interrupted command resumes each seed from its last checkpoint (same result); a finished organism's
folder is refused. Defences: caft (project the direction(s) out of the residual stream during
training), steer (add alpha * d during training; the saved model is unsteered), kl (KL to the base on
aligned chats), interleave (a share of aligned chats); --aligned-data defaults to the pair's benign set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emi import cli


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.finetune", __doc__)
    p.add_argument("data", help="chat JSONL: one {\"messages\": [...]} per line")
    g = p.add_argument_group("base")
    g.add_argument("--pair", default=None, help="a named pair whose base is finetuned and whose kit evaluates the "
                                                 "organism (default: the default pair)")
    g.add_argument("--base", default=None, help="a base checkpoint instead: hub id[@revision] or folder")
    g.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when available)")
    g.add_argument("--dtype", default="auto", help="weights while training: fp32 (auto), bf16, fp16")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; on a busy 2-core machine 1 was 15x faster than 2)")
    g = p.add_argument_group("finetune")
    g.add_argument("--out", required=True, help="folder of the organisms (OUT/seed-S)")
    g.add_argument("--seeds", type=_ints, default=(0,), help="comma-separated seeds, one organism each (default 0)")
    g.add_argument("--method", default="lora", choices=["lora", "full"], help="LoRA adapter (default) or full")
    g.add_argument("--rank", type=int, default=8, help="LoRA rank (1 for a rank-1 organism; default 8)")
    g.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 * rank)")
    g.add_argument("--modules", default=",".join(_default_modules()), help="LoRA target modules (comma-separated)")
    g.add_argument("--lora-layers", type=_ints, default=None, help="LoRA only on these layers (default all)")
    g.add_argument("--lr", type=cli.finite("--lr"), default=1e-4, help="peak learning rate (default 1e-4)")
    g.add_argument("--steps", type=int, default=100, help="optimiser steps (default 100)")
    g.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation (default 1)")
    g.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (default 0); then cosine to 10%%")
    g.add_argument("--weight-decay", type=cli.finite("--weight-decay"), default=0.01)
    g.add_argument("--adam-beta2", type=cli.finite("--adam-beta2"), default=0.999)
    g.add_argument("--max-len", type=int, default=1024, help="tokens per chat (longer ones are cut; default 1024)")
    g.add_argument("--save-every", type=int, default=0, help="save a checkpoint every N steps (default: the final only)")
    g.add_argument("--max-examples", type=int, default=None, help="read only the first N lines of DATA")
    g.add_argument("--restart", action="store_true",
                   help="a seed folder holding a run with other settings (or other files) is emptied and started "
                        "over with these settings, instead of refused")
    g = p.add_argument_group("defence")
    g.add_argument("--defence", default="none", choices=["none", "caft", "steer", "kl", "interleave"])
    g.add_argument("--direction", action="append", default=[], help="persona direction file (caft: repeatable)")
    g.add_argument("--steer-alpha", type=cli.finite("--steer-alpha"), default=0.0, help="steer: alpha")
    g.add_argument("--steer-layers", type=_ints, default=None, help="steer: layers (default the direction's best)")
    g.add_argument("--kl-beta", type=cli.finite("--kl-beta"), default=0.0, help="kl: weight of the KL term")
    g.add_argument("--interleave-share", type=cli.finite("--interleave-share"), default=0.0,
                   help="interleave: share of aligned chats in the training mix")
    g.add_argument("--system", default=None,
                   help="inoculation prompting: train with this system prompt in every chat (replacing the data's own): "
                        "a name emi ships (inoculation, training-context, ...; emi/data/system_prompts.yaml), a .txt "
                        "file or the text; evaluate with and without it: python -m emi.evaluate --system ...")
    g.add_argument("--aligned-data", default=None, help="aligned chats for kl/interleave: a chat JSONL or a benign "
                                                        "set name (default: the pair's benign set)")
    return p


def _default_modules() -> tuple[str, ...]:
    from emi.training.config import DEFAULT_MODULES

    return DEFAULT_MODULES


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from emi.core import locks
    from emi.training.trainer import finetune

    base, data, jobs = _plan(args)  # everything checked from configs and files: nothing created yet
    rows = []
    for job, start_over in jobs:
        with locks.exclusive(job.out):
            if start_over:
                print(f"--restart: emptying {job.out} and starting it over", file=sys.stderr)
                locks.clear(job.out)
            org = finetune(job)
        r = org.record
        rows.append({"seed": job.seed, "defence": org.defence, "method": r["method"], "steps": r["steps"],
                     "loss": f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-",
                     "folder": str(job.out)})
    print(f"{len(data)} chats from {args.data} (sha256 {data.sha256[:12]}), base {base.label()}")
    cli.print_table(rows, [("seed", "seed"), ("defence", "defence"), ("method", "method"), ("steps", "steps"),
                           ("loss", "final loss"), ("folder", "organism (--pair FOLDER)")])
    print(f"evaluate: python -m emi.defences {' '.join(r['folder'] for r in rows)}", file=sys.stderr)
    return 0


def _plan(args: argparse.Namespace):  # -> (ModelSpec, ChatDataset, [(Job, start over)])
    """The whole run checked before anything is written: flags, data, the base's config against the
    layer flags and directions, and each seed's folder (a run with other settings is refused, or
    with --restart marked to be emptied)."""
    from emi.training.data import aligned_chats, load_chats, with_system
    from emi.training.trainer import Job, check_folder

    base, kit_name, kit = _base(args)
    cfg, defence = _configs(args)
    data = load_chats(args.data, args.max_examples)
    if defence.system is not None:  # inoculation prompting: every training chat gets the system prompt
        data = with_system(data, defence.system)
    aligned = aligned_chats(args.aligned_data or kit.benign) if defence.kind in ("kl", "interleave") else ()
    _check_model(base, cfg, defence)
    jobs = []
    for seed in dict.fromkeys(args.seeds):
        job = Job(base, data, cfg, defence, seed, Path(args.out) / f"seed-{seed}", kit_name, aligned, args.device,
                  args.threads)
        try:
            check_folder(job)
            jobs.append((job, False))
        except cli.ConfigError:
            if not args.restart:
                raise
            jobs.append((job, True))
    return base, data, jobs


def _check_model(base, cfg, defence) -> None:  # noqa: ANN001
    """--lora-layers, --steer-layers and every --direction against the base's config (no weights)."""
    from emi.directions.direction import Direction
    from emi.models.loading import text_config
    from emi.models.plan import check_layer_list

    conf = text_config(base)[0]
    width, depth = getattr(conf, "hidden_size", None), getattr(conf, "num_hidden_layers", None)
    what = f"the base {base.label()!r}"
    check_layer_list(cfg.layers, depth, "--lora-layers", what)
    check_layer_list(defence.layers, depth, "--steer-layers", what)
    for path in defence.directions:
        d = Direction.load(path)
        if isinstance(width, int):
            d.check_fits(width, depth if isinstance(depth, int) else None, "the model being finetuned")


def _base(args: argparse.Namespace):  # -> (ModelSpec, kit pair name | None, PairKit)
    from emi.models.kit import REAL
    from emi.models.registry import default_pair, get_pair
    from emi.models.specs import ModelSpec

    if args.base and args.pair:
        raise cli.ConfigError("give either --pair (its base) or --base, not both")
    if args.base:
        return ModelSpec.parse(args.base), None, REAL
    spec = get_pair(args.pair) if args.pair else default_pair()
    return spec.base, spec.name, spec.kit


def _configs(args: argparse.Namespace):  # -> (FinetuneConfig, DefenceConfig)
    from emi.training.config import DefenceConfig, FinetuneConfig

    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip())
    cfg = FinetuneConfig(args.method, args.rank, args.lora_alpha, modules, args.lora_layers, args.lr, args.steps,
                         args.batch_size, args.grad_accum, args.warmup, 0.1, args.weight_decay, args.adam_beta2, 1.0,
                         args.max_len, args.save_every, args.dtype)
    system, name = None, ""
    if args.system is not None:
        from emi.behaviour.elicitation import resolve_system

        name, system = resolve_system(args.system)
        if system is None:
            raise cli.ConfigError("--system none trains without a system prompt: drop --system")
    defence = DefenceConfig(args.defence, tuple(args.direction), args.steer_alpha, args.steer_layers, args.kl_beta,
                            args.interleave_share, args.aligned_data, system=system, system_name=name)
    return cfg, defence


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
