"""python -m emi.defences ORGANISM...: the defence table of organisms made by python -m emi.finetune
(a folder of seed-S organisms counts as all of them): per defence and seed, the EM rate and coherence
(the judge, 95% CIs), the log-prob P(misaligned), the pair kit's task rate, KL(base || organism) on the
kit's benign set, and the activation shift along the persona direction (at the end, and at every
saved checkpoint); then each defence's seeds' mean and spread, and a figure.

  python -m emi.defences runs/ft-none runs/ft-caft runs/ft-steer --with-pair-finetune --out runs/defences

The direction is --direction, else the shipped one of the pair the organisms were made from. Writes
defences.jsonl, spread.json, run.json, answers and defences.html/.png under --out; re-running resumes
from the answers already sampled.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from emi import cli

if TYPE_CHECKING:
    from emi.training.records import DefenceRow


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.defences", __doc__)
    p.add_argument("organisms", nargs="+", help="organism folders (or folders of seed-S organisms)")
    p.add_argument("--direction", default=None, help="persona direction (default: the source pair's shipped one)")
    p.add_argument("--with-pair-finetune", action="store_true",
                   help="add a row for the source pair's own finetune (e.g. the embedded organism)")
    p.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="bf16, fp16, fp32 or auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    cli.add_sampling_args(p, n=25)
    cli.add_elicitation_args(p, sweep=False)  # one elicitation: recorded with and keyed into every answer
    cli.add_judge_args(p)
    p.add_argument("--out", default="runs/defences", help="output folder (default runs/defences)")
    p.add_argument("--no-figure", action="store_true", help="skip writing the figure")
    return p


def _organisms(paths: Sequence[str]):  # -> list[Organism]
    from emi.models.organism_folder import read_organism

    out = []
    for p in paths:
        org = read_organism(p)
        found = [org] if org else [o for o in (read_organism(d) for d in sorted(Path(p).glob("seed-*"))) if o]
        if not found:
            raise cli.ConfigError(f"{p!r} holds no organism (organism.json) and no seed-S organisms; give folders "
                                  f"python -m emi.finetune wrote")
        out += found
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    from emi.behaviour.logprob import option_pairs
    from emi.behaviour.questions import load_questions
    from emi.behaviour.side_effects import load_benign
    from emi.core import locks
    from emi.directions.direction import Direction
    from emi.models.registry import get_pair
    from emi.training.evaluation import Setup, shift_predicts, spread, table

    if args.threads:
        torch.set_num_threads(args.threads)
    orgs = _organisms(args.organisms)
    specs = [get_pair(str(o.folder)) for o in orgs]
    source = get_pair(orgs[0].record["kit"]) if orgs[0].record.get("kit") else None
    kit = specs[0].kit
    if not (args.direction or (source and source.kit.direction)):
        raise cli.ConfigError("the organisms' pair ships no direction; pass --direction FILE (python -m emi.extract)")
    direction = Direction.load(args.direction or source.kit.direction)  # type: ignore[union-attr,arg-type]
    from emi.directions.direction import check_fits_pair

    path = args.direction or source.kit.direction  # type: ignore[union-attr]
    for spec in specs:  # each organism's base and finetune from their configs, and the direction against them
        check_fits_pair(path, cli.plan_from_args(args, ("base", "finetuned"), spec=spec))  # type: ignore[arg-type]
    questions = load_questions(args.questions or kit.eval_questions, ids=args.ids)
    out = Path(args.out)
    setup = Setup(questions, load_questions(kit.extract_questions), cli.sampling_config(args, kit),
                  cli.make_judge_from_args(args, kit.judge),
                  option_pairs(questions, extra=cli.extra_option_pairs(args), required=False), kit.task,
                  load_benign(kit.benign), out, {"device": args.device, "dtype": args.dtype})
    extra = [(f"{source.name} finetune", source)] if args.with_pair_finetune and source else []
    with locks.exclusive(out):
        rows = table(orgs, specs, direction, setup, extra, log=lambda m: print(m, file=sys.stderr))
        summary, r = spread(rows), shift_predicts(rows)
        _write(out, rows, summary, r, direction, setup, [str(o.folder) for o in orgs], args.no_figure)
    print_table(rows, summary, kit.task.name if kit.task else None, direction.best_layer)
    if r:
        print("Pearson r across organisms, shift along d vs: " + ", ".join(f"{k} {v:+.2f}" for k, v in r.items()))
    return 0


def _write(out: Path, rows, summary, r, direction, setup, folders, no_figure: bool) -> None:  # noqa: ANN001
    from emi.core.atomic import write_json
    from emi.experiments.results import write_results

    write_results(out, [row.row() for row in rows], {"organisms": folders, "direction": direction.summary(), "judge": setup.judge.name,
                              "sampling": setup.cfg.settings(), "n": setup.cfg.n, "benign": len(setup.benign),
                              "task": setup.task.name if setup.task else None, "correlations": r}, name="defences")
    write_json(out / "spread.json", summary)
    if not no_figure:
        from emi.report.figures import defences, export

        written = export(defences(rows, setup.task.name if setup.task else None), out / "defences",
                         formats=("html", "png"))
        print(f"figure: {', '.join(map(str, written))}", file=sys.stderr)


def _line(r: DefenceRow) -> dict[str, str]:
    """A row's cells of the printed table."""
    m, n = r.measures, r.measures.n_answers
    return {"defence": r.defence, "seed": "" if r.seed is None else str(r.seed),
            "em": cli.fmt_counted(m.em, n), "coh": cli.fmt_counted(m.coherence, n), "task": cli.fmt_counted(r.task, n),
            "kl": r.kl.fmt(".3f"), "shift": m.projection_shift.fmt("+.2f"),
            "lp": f"{m.p_misaligned.value:.3f}" if m.p_misaligned.value == m.p_misaligned.value else "",
            "evaluated": r.evaluated}


def print_table(rows: Sequence[DefenceRow], summary: list[dict], task: str | None, layer: int) -> None:
    table = [_line(r) for r in rows]
    columns = [("defence", "defence"), ("seed", "seed")]
    if any(r.evaluated != "default" for r in rows):
        columns.append(("evaluated", "evaluated with"))
    columns += [("em", "EM rate (95% CI)"), ("coh", "coherent (95% CI)")]
    if task:
        columns.append(("task", f"{task} (95% CI)"))
    columns += [("lp", "P(misaligned)"), ("kl", "KL benign (95% CI)"), ("shift", f"shift along d @L{layer}")]
    cli.print_table(table, columns)
    print("EM, coherence, task and P(misaligned): asked as the row is evaluated (its elicitation; [eval: P]: with "
          "the system prompt P the organism was trained with); KL benign: on the benign conversations as they stand; "
          "shift along d: at the last token of the plain question prompts")
    print("\nseeds' spread per defence (mean, sd, [min, max]):")
    width = max((len(s["defence"]) for s in summary), default=0)
    for s in summary:
        parts = [f"{name} {100 * s[k + '_mean']:.1f}% (sd {100 * s[k + '_sd']:.1f}) [{100 * s[k + '_min']:.1f}, "
                 f"{100 * s[k + '_max']:.1f}]" for k, name in (("em_rate", "EM"), ("task_rate", "task")) if k + "_mean" in s]
        parts.append(f"shift {s['projection_shift_mean']:+.2f} (sd {s['projection_shift_sd']:.2f})")
        print(f"  {s['defence']:<{width}}  seeds {','.join(map(str, s['seeds']))}: " + "; ".join(parts))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
