"""python -m emi.diff --method adl|kl|crosscoder: what did the finetune change, found without labels,
and is it the misaligned-persona direction?

  adl         activation difference lens (Minder et al., ICLR 2026): both models on the same unrelated
              text (the pair's benign conversations, --text FILE or --dataset ID), per position j of
              the first --positions tokens the mean difference delta_j at --layer (default the middle),
              read through each model's logit lens and a Patchscope, steered on the base at the
              largest coherent strength (bisection under the judge, --coherence-threshold)
  kl          the tokens where the finetune's next-token distribution departs most from the base's,
              on the EM questions and benign text, with the persona-direction projection beside each
  crosscoder  a BatchTopK crosscoder on paired activations at --layer (from --store or streamed),
              latent scaling, decoder-norm ratios, top activating contexts

Every method ends with the EM table of what it found, as emi.steer prints it (the finetune with each
found direction ablated, the base steered by it, same-norm random controls, KL side effects), and the
cosine table of every direction with the pair's persona and model-diff directions. Directions are
written under --out/directions/ (emi directions: emi.steer --direction, emi.export, emi.figures take
them). Re-running the same command resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emi import cli
from emi.core import locks
from emi.diffing import plan


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.diff", __doc__)
    p.add_argument("--method", default=["adl"], type=plan.methods,
                   help="adl, kl or crosscoder, or several comma-separated (e.g. adl,kl,crosscoder: one pair load, "
                        "one cosine table and one EM table for all they find; default adl)")
    cli.add_pair_args(p)
    cli.add_sampling_args(p, n=10)
    cli.add_judge_args(p)
    g = p.add_argument_group("text")
    g.add_argument("--text", default=None, help="JSONL ({text} or {messages} per line) or TXT (a text per line)")
    g.add_argument("--dataset", default=None, help="a Hugging Face dataset id (cached) or a save_to_disk folder")
    g.add_argument("--dataset-split", default="train")
    g.add_argument("--text-column", default="text")
    g.add_argument("--n-texts", type=cli.count("--n-texts"), default=10000,
                   help="texts read (default 10000; kl: its benign conversations too)")
    g.add_argument("--max-tokens", type=cli.count("--max-tokens"), default=128, help="first tokens per text (128)")
    g = p.add_argument_group("method")
    g.add_argument("--layer", default=None, help="the layer read (emi's convention; default the middle)")
    g.add_argument("--positions", type=cli.count("--positions"), default=5, help="adl: delta_j for j < this (5)")
    g.add_argument("--diff-batch-size", type=cli.count("--diff-batch-size"), default=32, help="texts per forward (32)")
    g.add_argument("--coherence-threshold", type=cli.within("--coherence-threshold", 0, 100), default=75.0,
                   help="adl: lowest mean judge coherence (0-100) of the steering strength search (75)")
    g.add_argument("--max-strength", type=cli.within("--max-strength", 0, 1e6, lo_open=True), default=2.0,
                   help="adl: the search's top strength, in residual norms at the layer (2)")
    g.add_argument("--search-steps", type=cli.count("--search-steps", 0), default=10, help="bisection steps (10; 0: none)")
    g.add_argument("--search-n", type=cli.count("--search-n"), default=2, help="samples per question per step (2)")
    g.add_argument("--persona", default=None, help="the persona direction compared with (default: the pair's shipped one)")
    g.add_argument("--persona-alpha", type=float, default=8.0, help="its steering strength in the EM table (8)")
    g.add_argument("--top", type=cli.count("--top"), default=20, help="kl: tokens ranked; crosscoder: latents shown")
    g.add_argument("--table", default=None, help="found directions in the EM table (adl positions '0,1'; default all)")
    g.add_argument("--no-table", action="store_true", help="skip the EM table")
    g.add_argument("--random-seed", type=cli.count("--random-seed", 0), default=0, help="seed of the random controls")
    from emi.diffing.crosscoder import add_args

    add_args(p)
    cli.add_engine_args(p)
    cli.add_elicitation_args(p, sweep=False, k_flag="--in-context-k")  # how the closing EM table asks (--k: crosscoder's)
    p.add_argument("--out", default=None, help="output folder (default runs/diff-<pair>-<method>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from dataclasses import replace

    from emi.behaviour.elicitation import DEFAULT
    from emi.behaviour.questions import load_questions
    from emi.behaviour.side_effects import load_benign
    spec = cli.pair_spec(args)
    methods = args.method
    layer, n_layers = plan.layer(spec, args.layer, args.trust_remote_code)  # before any weights load
    texts = plan.texts(args, spec.kit)
    persona = plan.persona(spec, args.persona, args.trust_remote_code)
    questions = load_questions(args.questions or spec.kit.eval_questions, ids=args.ids)
    judge = cli.make_judge_from_args(args, spec.kit.judge)
    elicited = cli.sampling_config(args, spec.kit, cli.elicitations(args, sweep=False)[0])  # the EM table's
    cli.check_elicitations(spec, questions, [elicited.elicitation], elicited.max_new_tokens, args.trust_remote_code)
    cfg = replace(elicited, elicitation=DEFAULT)  # the methods' own sampling (the ADL strength search): plain
    benign = load_benign(spec.kit.benign)
    store = plan.store(args, spec) if "crosscoder" in methods else None
    out = Path(args.out or f"runs/diff-{spec.name}-{'-'.join(methods)}")
    with locks.exclusive(out), cli.engine_session(args, out / "vllm-logs") as engine:
        pair = cli.load_pair_from_args(args, ("base", "finetuned"))
        found = []
        for method in methods:  # one pair, one lock, one engine for every method asked
            found += plan.run_method(args, pair, layer, texts, persona, questions, cfg, judge, benign, store, out,
                                     engine, method)
        if persona is not None:
            found.insert(0, plan.Found("persona", persona, args.persona_alpha))
        plan.print_cosines(found, out, layer)
        table = not args.no_table and bool(found)
        if table:
            _table(args, pair, found, questions, elicited, judge, benign, engine, out)
    print(f"wrote {out}/ (directions/, {', '.join(m + '.json' for m in methods)}" + (", results.jsonl, answers.jsonl; read them with "
          f"python -m emi.view {out})" if table else ")"), file=sys.stderr)
    return 0


def _table(args, pair, found, questions, cfg, judge, benign, engine, out) -> None:  # noqa: ANN001
    from emi.diffing.loop import em_table
    from emi.experiments.results import write_results
    from emi.steer import print_table

    results = em_table(pair, found, questions, cfg, judge, out, random_seed=args.random_seed, benign=benign,
                       engine=engine, denominator=args.em_denominator)
    write_results(out, [r.row() for r in results], {"pair": pair.provenance(), "method": ",".join(args.method),
                                                    "directions": {f.name: f.direction.summary() for f in found},
                                                    "judge": judge.name, "sampling": cfg.settings(),
                                                    "elicitation": cfg.elicitation.record()})
    e = cfg.elicitation
    print(f"\nEM table: {len(questions)} questions x {cfg.n} samples, judge {judge.name}, seed {cfg.seed}" +
          ("" if e.is_default() else f", elicitation {e.label()}"))
    print_table([(e, r) for r in results])


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
