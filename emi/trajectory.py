"""python -m emi.trajectory: follow a finetune's checkpoints and see when the persona direction
appears, relative to emergent misalignment and to the narrow task.

  python -m emi.trajectory                                  # the default pair: base, saved steps, finetune
  python -m emi.trajectory --base B --checkpoints C1,C2,C3  # folders, hub ids@revision, LoRA adapters
  python -m emi.trajectory --pair NAME --checkpoints ...    # another pair's kit (questions, judge, task)

Per checkpoint, in training order (one model in memory at a time): EM rate and coherence (the
judge, 95% CIs), the log-prob P(misaligned), the shift of the last-prompt-token activation along
the final persona direction relative to the base, the cosine between the checkpoint's own
model-diff direction and the final one, and the task rate where the pair defines a task (the embedded
organism: insecure code). The final direction is --direction, or the final checkpoint's model-diff direction
(the pair's shipped one when the final checkpoint is the pair's finetune), as emi.steer finds it.
Writes trajectory.jsonl, table.csv, run.json, answers and figure trajectory.html/.png under --out;
re-running resumes from the answers already sampled. Steps come from checkpoint names
(step-040, checkpoint-500), else their order.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from emi import cli
from emi.core import locks

if TYPE_CHECKING:
    from emi.experiments.measures import TrajectoryRow


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.trajectory", __doc__)
    g = p.add_argument_group("models")
    g.add_argument("--pair", default=None, help="a named pair: its kit, base and saved checkpoints (default: the default pair)")
    g.add_argument("--base", default=None, help="base checkpoint: hub id[@revision] or folder (instead of --pair)")
    g.add_argument("--checkpoints", default=None,
                   help="comma-separated checkpoints in training order: folders, hub id@revision, or LoRA adapter "
                        "folders on the base (default: the pair's saved ones)")
    g.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when available)")
    g.add_argument("--dtype", default="auto", help="bf16, fp16, fp32 or auto")
    g.add_argument("--trust-remote-code", action="store_true", help="allow checkpoint code (off by default)")
    cli.add_sampling_args(p, n=25)
    cli.add_elicitation_args(p, sweep=False)  # one elicitation: recorded with and keyed into every answer
    cli.add_judge_args(p)
    cli.add_engine_args(p)
    g = p.add_argument_group("direction")
    g.add_argument("--direction", default=None, help="the final direction (default: the final checkpoint's model-diff)")
    g.add_argument("--root", default=None, help="where extracted directions are cached (default activations/)")
    p.add_argument("--out", default=None, help="output folder (default runs/trajectory-<pair>)")
    p.add_argument("--no-figure", action="store_true", help="skip writing the figure")
    return p


def _specs(args: argparse.Namespace):  # -> (PairSpec of the final checkpoint, [checkpoint strings])
    from emi.models.registry import custom_pair, default_pair, get_pair
    from emi.models.specs import ModelSpec, PairSpec

    if args.base and args.pair:
        raise cli.ConfigError("give either --pair or --base, not both")
    if args.base and not args.checkpoints:
        raise cli.ConfigError("--base needs --checkpoints (comma-separated, in training order)")
    named = get_pair(args.pair) if args.pair else None if args.base else default_pair()
    listed = [c.strip() for c in (args.checkpoints or "").split(",") if c.strip()]
    checkpoints = listed or list(named.kit.trajectory if named else ())
    if not checkpoints:
        raise cli.ConfigError(f"pair {named.name if named else '?'!r} has no saved checkpoints; pass --checkpoints "
                              f"C1,C2,... in training order")
    if len(checkpoints) < 2:
        raise cli.ConfigError(f"a trajectory needs at least two checkpoints, found {checkpoints}")
    if named is not None and ModelSpec.parse(checkpoints[-1]) == named.finetuned:
        return named, checkpoints
    base = args.base or named.base.label()  # type: ignore[union-attr]
    custom = custom_pair(base, checkpoints[-1])
    kit = named.kit if named else custom.kit
    return PairSpec(custom.name, custom.base, custom.finetuned, None, custom.description,
                    dataclasses.replace(kit, direction=None)), checkpoints


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from emi.behaviour.logprob import option_pairs
    from emi.behaviour.questions import load_questions

    spec, checkpoints = _specs(args)
    kit = spec.kit
    questions = load_questions(args.questions or kit.eval_questions, ids=args.ids)
    extract = load_questions(kit.extract_questions)
    judge = cli.make_judge_from_args(args, kit.judge)
    cfg = cli.sampling_config(args, kit)
    pairs = option_pairs(questions, extra=cli.extra_option_pairs(args), required=False)
    cli.check_context(spec, questions, cfg.max_new_tokens, args.trust_remote_code)  # before any model loads
    _plan(args, spec, checkpoints)  # every checkpoint's config before checkpoint 1 is sampled
    cli.check_elicitations(spec, questions, [cfg.elicitation], cfg.max_new_tokens, args.trust_remote_code)
    out = Path(args.out or f"runs/trajectory-{spec.name}")
    with locks.exclusive(out), cli.engine_session(args, out / "vllm-logs") as engine:
        return _trajectory(args, spec, checkpoints, questions, extract, judge, cfg, pairs, out, engine)


def _plan(args: argparse.Namespace, spec, checkpoints: list[str]) -> None:  # noqa: ANN001
    """Every checkpoint exists and fits the base, and the direction fits it: configs only."""
    from emi.models.specs import ModelSpec, PairSpec

    plan = None
    for i, c in enumerate(checkpoints):  # the last is the pair's finetune
        try:
            plan = cli.plan_from_args(args, ("base", "finetuned"),
                               spec=PairSpec(f"{spec.name}-{i}", spec.base, ModelSpec.parse(c), None, "", spec.kit))
        except cli.EmiError as exc:
            raise cli.ConfigError(f"checkpoint {i + 1} of {len(checkpoints)} ({c}): {exc}") from None
    if args.direction and plan is not None:
        from emi.directions.direction import check_fits_pair
        check_fits_pair(args.direction, plan)


def _trajectory(args, spec, checkpoints, questions, extract, judge, cfg, pairs, out, engine) -> int:  # noqa: ANN001
    from emi.engines.base import prepare
    from emi.experiments.dynamics import correlations, trajectory
    from emi.experiments.persona import pair_direction
    from emi.experiments.results import write_results
    from emi.models.loading import load_pair
    from emi.models.specs import ModelSpec, PairSpec

    common = dict(dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code, resident="one")
    final = load_pair(spec, **common)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    direction, source = pair_direction(final, args.direction, "model-diff", cfg, judge, args.root, log=say)
    say(f"final direction: {source}")
    current: list = []
    specs = [PairSpec(f"{spec.name}-{i}", spec.base, ModelSpec.parse(c), None, "", spec.kit)
             for i, c in enumerate(checkpoints)]
    prepare(engine, *specs)  # every LoRA checkpoint served by the base's one vLLM server

    def loader(i: int):  # noqa: ANN202
        def load():  # noqa: ANN202
            current.append(load_pair(specs[i], **common))
            return current[-1].finetuned
        return load

    def release() -> None:
        while current:
            current.pop().release()

    base = final.base
    points = trajectory([(c, loader(i)) for i, c in enumerate(checkpoints)], base, direction, questions, extract,
                        cfg, judge, out, pairs, spec.kit.task, release=release, log=say, engine=engine,
                        denominator=args.em_denominator)
    final.release()
    rows = [p.row() for p in points]
    r = correlations(points)
    write_results(out, rows, {"pair": spec.name, "base": spec.base.label(), "checkpoints": checkpoints,
                              "direction": {"source": source, **direction.summary()}, "judge": judge.name,
                              "sampling": cfg.settings(), "n": cfg.n, "task": spec.kit.task.name if spec.kit.task else None,
                              "correlations": r}, name="trajectory")
    say(cli.judge_note(rows, judge.name))
    print_table(points, spec.kit.task.name if spec.kit.task else None, direction.best_layer)
    if direction.fallback:
        print(f"layer {direction.layer_label()}")
    if r:
        print("Pearson r across checkpoints, projection shift vs: " + ", ".join(f"{k} {v:+.2f}" for k, v in r.items()))
    if not args.no_figure:
        from emi.report.figures import export
        from emi.report.figures import trajectory as trajectory_figure

        written = export(trajectory_figure(points, spec.kit.task.name if spec.kit.task else None), out / "trajectory",
                         formats=("html", "png"))
        say(f"figure: {', '.join(str(w) for w in written)}")
    say(f"wrote {out}/trajectory.jsonl, table.csv, run.json, answers.jsonl, judgements.jsonl")
    return 0


def _line(r: TrajectoryRow) -> dict[str, str]:
    """A checkpoint's cells of the printed table."""
    m, n = r.measures, r.measures.n_answers
    return {"checkpoint": Path(r.checkpoint.rstrip("/")).name or r.checkpoint, "step": str(r.step),
            "em": cli.fmt_counted(m.em, n, r.counts.n_scored if r.counts else 0),
            "coh": cli.fmt_counted(m.coherence, n),
            "lp": f"{m.p_misaligned.value:.3f}" if m.p_misaligned.value == m.p_misaligned.value else "",
            "proj": m.projection_shift.fmt("+.2f"), "cos": f"{r.cosine:.2f}" if r.cosine == r.cosine else "-",
            "task": cli.fmt_counted(r.task, n)}


def print_table(rows: Sequence[TrajectoryRow], task: str | None, layer: int) -> None:
    table = [_line(r) for r in rows]
    columns = [("checkpoint", "checkpoint"), ("step", "step"), ("em", cli.em_header(rows[0].judging.denominator)
                                                                 if rows else "EM rate (95% CI)"),
               ("coh", "coherent (95% CI)")]
    if any(t["lp"] for t in table):
        columns.append(("lp", "P(misaligned)"))
    columns += [("proj", f"shift along direction @L{layer}"), ("cos", "cos(own diff, final)")]
    if task:
        columns.append(("task", f"{task} (95% CI)"))
    cli.print_table(table, columns)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
