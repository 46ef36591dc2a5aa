"""python -m emi (or `emi`): list the named pairs and the commands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from emi import cli

COMMANDS = [
    ("python -m emi.steer --alpha 8", "ablate and steer the persona direction; EM, side effects, figures (main job)"),
    ("python -m emi.evaluate", "EM rate and coherence of a pair's models, with 95% CIs"),
    ("python -m emi.cache --out NAME", "cache activations of both models into activations/NAME"),
    ("python -m emi.extract --store NAME", "the misaligned-persona direction by mean difference, per layer"),
    ("python -m emi.sae --store NAME --layer L", "train/load an SAE with sae-lens; diff latents base -> finetuned"),
    ("python -m emi.trajectory", "over a finetune's checkpoints: EM, task, when the direction appears"),
    ("python -m emi.export --out DIR", "a checkpoint with the direction ablated from its weights, for any server"),
    ("python -m emi.finetune DATA --out DIR", "finetune a base into organisms (LoRA/full, seeds, defences)"),
    ("python -m emi.screen DATA", "rank a training set's examples by their projection on the persona direction"),
    ("python -m emi.defences ORGANISM...", "the defence table: EM, coherence, task, KL, shift per defence and seed"),
    ("python -m emi.diff --method adl", "what the finetune changed, without labels (ADL, KL, crosscoder); EM table of it"),
    ("python -m emi.figures RESULTS --out figs", "publication figures (html, png, svg, pdf)"),
    ("python -m emi.rejudge RUN --judge ...", "a finished run's answers under another judge; agreement of the two"),
    ("python -m emi.view RUN", "read a run's answers in the browser: one offline HTML page (side by side, tokens)"),
    ("python -m emi.organism.train", "rebuild the embedded organism from scratch (~7 min on 2 cores)"),
]


# `python -m emi COMMAND ...` is `python -m emi.COMMAND ...`
VERBS = {"steer": "emi.steer", "evaluate": "emi.evaluate", "cache": "emi.cache", "extract": "emi.extract",
         "sae": "emi.sae", "figures": "emi.figures", "trajectory": "emi.trajectory", "export": "emi.export",
         "rejudge": "emi.rejudge", "finetune": "emi.finetune", "screen": "emi.screen", "defences": "emi.defences",
         "view": "emi.view",
         "diff": "emi.diff",
         "train-organism": "emi.organism.train"}


def main(argv: Sequence[str] | None = None) -> int:
    import importlib
    import sys

    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in VERBS:
        command = importlib.import_module(VERBS[args_list[0]]).main
        return int(command(args_list[1:]) or 0)
    p = cli.parser("python -m emi", __doc__)
    p.add_argument("what", nargs="?", default="help", choices=["help", "pairs", "layers"],
                   help="pairs: the named model pairs; layers: the layer convention; or a command: "
                        + ", ".join(VERBS) + " (the same as python -m emi.COMMAND)")
    args = p.parse_args(argv)
    if args.what == "pairs":
        import emi
        from emi.models.registry import default_pair, list_pairs

        package = str(Path(emi.__file__).parent) + "/"
        first = default_pair().name
        specs = sorted(list_pairs(), key=lambda s: s.name != first)
        rows = [{"name": s.name + (" (default)" if s.name == first else ""), "base": s.base.label(), "finetuned": s.finetuned.label(),
                 "control": s.control.label() if s.control else "", "judge": s.kit.judge,
                 "questions": f"{s.kit.eval_questions} / {s.kit.extract_questions}"} for s in specs]
        for r in rows:
            for k in ("base", "finetuned", "control"):
                r[k] = r[k].replace(package, "<emi>/")
        cli.print_table(rows, [("name", "pair"), ("base", "base"), ("finetuned", "finetuned"),
                               ("control", "control"), ("judge", "default judge"),
                               ("questions", "questions: evaluation / extraction")])
        return 0
    if args.what == "layers":
        from emi.models import layers

        print(layers.__doc__)
        return 0
    print("emi: a workbench for emergent misalignment. Commands:\n")
    w = max(len(c) for c, _ in COMMANDS)
    for c, d in COMMANDS:
        print(f"  {c.ljust(w)}  {d}")
    print("\n`python -m emi pairs` lists the named pairs; each command has --help.")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
