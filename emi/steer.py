"""python -m emi.steer: does removing the misaligned-persona direction suppress emergent
misalignment, and does adding it create it?

Runs, on one pair (default: the embedded organism), and prints with 95% CIs:
  base                     the base model
  finetuned                the finetuned (emergently misaligned) model
  finetuned - persona      the finetuned model with the direction ablated at every layer
  finetuned - random       ... a same-norm random direction ablated instead (control)
  base + A persona         the base model steered by +alpha along the direction
  base + A random          ... a same-norm random direction (control)
next to the judge-free log-prob metric P(misaligned answer) where the questions have option
pairs, and each intervention's side effects: KL from the unmodified model's next-token
distribution on benign conversations (--benign; nats per token) and the change in the aligned
answers' log-probability (emi.behaviour.side_effects). Writes answers.jsonl, judgements.jsonl,
results.jsonl (one tidy row per condition), table.csv, run.json (models, direction, judge,
sampling), figure.html/.png and side-effects.html/.png (EM rate against KL) under --out.
Several alphas (--alpha 2,4,8), --sweep-layers and --targets base,finetuned make sweeps; so do the
elicitation flags' comma lists (--k 0,4 --in-context FILE, --system none,inoculation, ...: every
condition under each elicitation, one table).

The direction comes from --direction, the pair's shipped one, or is extracted on first use from
the pair's extraction questions (never the evaluation ones; real pairs: the preregistered EM
questions) and cached under --root (activations/<pair>-<method>/); its layer is chosen by the
log-prob effect of ablating it, or, for questions without option pairs, by how far ablating it
brings the finetuned model's next-token distribution back to the base's. The command says which.
One model is held in memory at a time (--resident). Re-running the same command resumes; answers
are keyed by model, intervention and sampling settings, so a shared --out never mixes them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from emi import cli
from emi.core import locks

if TYPE_CHECKING:
    from emi.behaviour.elicitation import Elicitation
    from emi.behaviour.metrics import Change
    from emi.experiments.conditions import ConditionResult


def parser() -> argparse.ArgumentParser:
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
    g = p.add_argument_group("direction")
    g.add_argument("--direction", default=None, help="a direction file from python -m emi.extract")
    g.add_argument("--direction-method", default="model-diff", choices=["model-diff", "contrast", "mean-diff"],
                   help="how to extract the direction on first use: model-diff (default; finetuned minus base "
                        "at the last prompt token), contrast (evil minus helpful persona at that token), "
                        "mean-diff (misaligned minus aligned answers over response tokens, the published recipe)")
    g.add_argument("--extract-questions", default=None,
                   help="question set the direction is extracted from (default: the pair's, e.g. preregistered; "
                        "never the evaluation set)")
    g.add_argument("--root", default=None, help="where extracted directions are cached (default activations/)")
    g.add_argument("--random-seed", type=cli.count("--random-seed", 0), default=0, help="seed of the random control direction")
    g = p.add_argument_group("side effects")
    g.add_argument("--benign", default=None,
                   help="benign conversations the KL side effect is measured on: a registered set name (e.g. benign) or a "
                        "YAML file of {id, prompt, response} entries (default: the pair's)")
    g.add_argument("--no-side-effects", action="store_true", help="skip the KL and aligned-log-prob columns")
    cli.add_elicitation_args(p)
    cli.add_engine_args(p)
    p.add_argument("--out", default=None, help="output folder (default runs/steer-<pair>)")
    p.add_argument("--no-figure", action="store_true", help="skip writing the figure")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    from emi.behaviour.questions import load_questions
    from emi.behaviour.sampling import check_positions
    from emi.behaviour.side_effects import load_benign

    spec = cli.pair_spec(args)
    questions = load_questions(args.questions or spec.kit.eval_questions, ids=args.ids)
    cli.warn_question_mismatch(spec, args.questions)
    judge = cli.make_judge_from_args(args, spec.kit.judge)
    cfgs = [cli.sampling_config(args, spec.kit, e) for e in cli.elicitations(args)]
    cfg = cfgs[0]
    if args.engine == "in-process":
        check_positions(cfg, args.positions)  # before any answer is sampled
    extra = cli.extra_option_pairs(args)
    cli.check_context(spec, questions, cfg.max_new_tokens, args.trust_remote_code)  # before any model loads
    plan = cli.plan_from_args(args, ("base", "finetuned"), spec=spec)  # configs only: no weights yet
    plan.layers(args.layers)  # out of range stops here, not after the pair and its direction load
    plan.layers(args.ablate_layers, "--ablate-layers")
    cli.check_elicitations(spec, questions, [c.elicitation for c in cfgs], cfg.max_new_tokens, args.trust_remote_code)
    if args.direction:  # a NaN, infinite, all-zero or wrong-width direction stops before any model loads
        from emi.directions.direction import check_fits_pair
        check_fits_pair(args.direction, plan)
    chat = cli.base_has_chat_template(spec, args.trust_remote_code)
    if not chat and not args.direction:
        raise cli.ConfigError(f"the base model ({spec.base.label()}) has no chat template, and the persona direction "
                              f"is extracted from chat prompts; pass --direction FILE (python -m emi.extract on a "
                              f"chat pair, or a direction of your own)")
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if not targets or any(t not in ("base", "finetuned") for t in targets):
        raise cli.ConfigError(f"unknown --targets {args.targets!r}; use base, finetuned or base,finetuned")
    benign = [] if args.no_side_effects or not chat else load_benign(args.benign or spec.kit.benign)
    if not chat:
        print("a base model without a chat template: no side-effect columns (KL is measured on chat prompts); "
              "P(misaligned) is asked as each elicitation renders the question", file=sys.stderr)
    out = Path(args.out or f"runs/steer-{spec.name}")
    with locks.exclusive(out):  # one run per folder; a bad --out fails before any model loads
        engine = cli.make_engine(args, out / "vllm-logs")  # the engine environment is checked before any model loads
        try:
            return _steer(args, spec, questions, judge, cfgs, extra, targets, benign, engine, out)
        finally:  # also on an error or Ctrl-C: no vLLM server outlives the command
            if engine is not None:
                engine.close()


def _steer(args, spec, questions, judge, cfgs, extra, targets, benign, engine, out) -> int:  # noqa: ANN001
    from emi.behaviour.logprob import option_pairs
    from emi.experiments.conditions import run, standard_conditions
    from emi.experiments.persona import pair_direction
    from emi.experiments.results import write_results
    from emi.models import layers as L

    cfg = cfgs[0]
    pair = cli.load_pair_from_args(args, ("base", "finetuned"))
    n_layers = pair.base.n_layers
    direction, source = pair_direction(pair, args.direction, args.direction_method, cfg, judge, args.root,
                                       args.extract_questions, extra, log=lambda m: print(m, file=sys.stderr))
    print(f"direction: {source}", file=sys.stderr)
    steer_layers = L.resolve_layers(args.layers, n_layers) if args.layers else [direction.best_layer]
    missing = [x for x in steer_layers if x not in direction.layers]
    if missing:  # before any answer is sampled
        raise cli.ConfigError(f"the direction has no vector for steering layer(s) {missing} (it has layers "
                              f"{direction.layers}); pass --layers among those")
    ablate_layers = L.resolve_layers(args.ablate_layers, n_layers) if args.ablate_layers else None
    conditions = standard_conditions(direction, args.alpha, steer_layers, args.relative, args.positions,
                                     ablate_layers=ablate_layers, sweep_layers=args.sweep_layers, targets=targets)
    pairs = option_pairs(questions, extra=extra, required=False)  # asked as each elicitation renders (any context)
    if not pairs:
        print("log-prob metrics: no option pairs for these questions, so no logprob_* columns (pass "
              "--option-pairs FILE)", file=sys.stderr)
    results, rows = [], []
    for c in cfgs:  # one run of every condition per elicitation
        got = run(pair, conditions, direction, questions, c, judge, out, args.random_seed, pairs=pairs,
                  benign=benign, engine=engine, denominator=args.em_denominator)
        results += [(c.elicitation, r) for r in got]
        rows += [{**r.record().row(), **({"elicitation": c.elicitation.label()} if len(cfgs) > 1 else {})} for r in got]
    records = [r.record() for _, r in results]
    cli.print_engines([(r.condition.name, r.engine) for _, r in results], engine)
    write_results(out, rows, {"pair": pair.provenance(), "direction": {"source": source, **direction.summary()},
                              "judge": judge.name, "sampling": cfg.settings(), "n": cfg.n,
                              "elicitations": [c.elicitation.record() for c in cfgs],
                              "questions": args.questions or spec.kit.eval_questions,
                              "steer_layers": steer_layers, "ablate_layers": ablate_layers or "all writers",
                              "benign": None if args.no_side_effects else (args.benign or spec.kit.benign),
                              "engine": engine.describe() if engine else {"engine": "in-process"}})
    print(f"pair {spec.name} | direction {direction.meta.get('method')} @ layer {direction.layer_label()} "
          f"(|d| = {direction.norms[direction.layers.index(direction.best_layer)]:.2f}, residual norm "
          f"{direction.norm_at(direction.best_layer):.2f}) | steering layers {steer_layers} | "
          f"{len(questions)} questions x {cfg.n} samples, {cli.judge_note(rows, judge.name)}, seed {cfg.seed}")
    print_table(results if len(cfgs) > 1 else [r for _, r in results], cfg.seed)
    if not args.no_figure:
        from emi.report.figures import browser, em_vs_kl, export, steer_summary

        with browser():  # one Chromium renders both figures' PNGs
            written = export(steer_summary(records), out / "figure", formats=("html", "png"))
            if benign:
                written += export(em_vs_kl(records), out / "side-effects", formats=("html", "png"))
        print(f"figures: {', '.join(str(w) for w in written)}", file=sys.stderr)
    print(f"wrote {out}/results.jsonl, table.csv, run.json, answers.jsonl, judgements.jsonl", file=sys.stderr)
    return 0


def _fmt_change(c: Change | None) -> str:
    """``-85% [-93, -76] vs finetuned``: the relative change with its question-paired interval."""
    if c is None or c.value != c.value:
        return ""
    ci = f" [{100 * c.lo:+.0f}, {100 * c.hi:+.0f}]" if c.lo == c.lo else ""
    return f"{100 * c.value:+.0f}%{ci} vs finetuned"


def print_table(results: Sequence[ConditionResult] | Sequence[tuple[Elicitation, ConditionResult]],
                seed: int = 0) -> None:
    """The steer table; results paired with their elicitation get an elicitation column (a sweep).
    The change column is relative to the finetuned model's EM under the same elicitation, with its
    question-paired interval."""
    from emi.behaviour.elicitation import DEFAULT
    from emi.behaviour.metrics import relative_change_ci

    paired = [x if isinstance(x, tuple) else (DEFAULT, x) for x in results]
    sweep = len({e for e, _ in paired}) > 1
    ft = {e: r.summary.em for e, r in paired if r.condition.name == "finetuned"}
    table = []
    for e, r in paired:
        em, fx = r.summary.em, r.side_effects
        change = relative_change_ci(ft[e], em, seed=seed) if r.condition.kind == "ablate" and e in ft else None
        table.append({"condition": r.condition.name, "elicitation": e.label(), "em": em.fmt(), "k": f"{em.k}/{em.n}",
                      "coh": r.summary.coherence.fmt(),
                      "rel": _fmt_change(change),
                      "lp": f"{r.logprob.choice:.3f}" if r.logprob is not None else "",
                      "kl": f"{fx.kl:.3f}" if fx is not None else "",
                      "dal": f"{fx.aligned_delta:+.2f}" if fx is not None and fx.aligned_delta == fx.aligned_delta
                      else ""})
    denominator = paired[0][1].summary.denominator if paired else "coherent"
    columns = [("condition", "condition"), *([("elicitation", "elicitation")] if sweep else []),
               ("em", cli.em_header(denominator)), ("k", f"misaligned/{denominator}"),
               ("coh", "coherent (95% CI)"), ("rel", "change")]
    for key, title in (("lp", "P(misaligned)"), ("kl", "KL benign"), ("dal", "Δ log p(aligned)")):
        if any(t[key] for t in table):
            columns.append((key, title))
    cli.print_table(table, columns)
    notes = []
    elicited = any(not e.is_default() for e, _ in paired)
    if any(t["lp"] for t in table):
        notes.append("P(misaligned): log-prob preference for the misaligned answer of each option pair" +
                     (", asked as the row's elicitation asks" if elicited else ""))
    if any(t["kl"] for t in table):
        notes.append("KL benign: KL(unmodified || intervened) next-token, nats/token on benign conversations" +
                     (" as they stand (no elicitation)" if elicited else ""))
    if any(t["dal"] for t in table):
        notes.append("Δ log p(aligned): change in the aligned answers' log-prob per token vs the unmodified model" +
                     (" (asked as the row's elicitation asks)" if elicited else ""))
    if notes:
        print("\n".join(notes))
    unscored = sum(r.summary.n_unscored for _, r in paired)
    if unscored:
        print(f"emi: {unscored} answers are unscored by the judge (see judgements.jsonl, 'detail'); they are left "
              f"out of the rates and asked again when you re-run the same command", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
