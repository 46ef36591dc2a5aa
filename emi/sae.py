"""python -m emi.sae: SAE features of the misaligned persona (Wang et al. 2025), via sae-lens.

Trains an SAE with sae-lens on a layer of an activation store (or loads one: a folder saved by
sae-lens, or --release/--sae-id from sae-lens's pretrained list), reports its reconstruction
quality, ranks latents by how much their mean activation rises from the base to the finetuned
model on the same texts, and prints the top latents with effect sizes, their decoder's cosine
with the mean-difference direction, and top-activating snippets. --zero evaluates the EM rate
with chosen latents zeroed (with a random-latent control), in-process or on vLLM (--engine vllm:
the edit runs in the server as a torch.export program of the SAE).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from emi import cli


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.sae", __doc__)
    p.add_argument("--store", required=True, help="activation store with base and finetuned models")
    p.add_argument("--layer", type=int, required=True, help="layer (residual stream after block l)")
    src = p.add_argument_group("which SAE")
    src.add_argument("--sae", default=None, help="a folder saved by sae-lens (default: <store>/sae-L<l>-..., trained if missing)")
    src.add_argument("--release", default=None, help="a sae-lens pretrained release (with --sae-id)")
    src.add_argument("--sae-id", default=None, help="the SAE id within --release")
    src.add_argument("--train", action="store_true", help="train even if the default SAE folder exists")
    tr = p.add_argument_group("training (sae-lens)")
    tr.add_argument("--architecture", default="topk", choices=["topk", "standard"], help="TopK or L1 (default topk)")
    tr.add_argument("--d-sae", type=cli.count("--d-sae"), default=512, help="latents (default 512)")
    tr.add_argument("--k", type=cli.count("--k"), default=16, help="TopK's k (default 16)")
    tr.add_argument("--l1", type=cli.within("--l1", 0, math.inf), default=5.0, help="L1 coefficient for --architecture standard")
    tr.add_argument("--steps", type=cli.count("--steps"), default=3000, help="training steps (default 3000)")
    tr.add_argument("--batch-size", type=cli.count("--batch-size"), default=256, help="rows per step (default 256)")
    tr.add_argument("--seed", type=cli.count("--seed", 0), default=0)
    an = p.add_argument_group("analysis")
    an.add_argument("--positions", default="all", choices=["all", "response", "last_prompt", "thought"],
                    help="rows to diff (default all; thought: the thoughts of answers sampled with --thinking on)")
    an.add_argument("--direction", default=None, help="direction file to compare decoder rows with "
                    "(default: mean-diff extracted from the store when it holds judged answers)")
    an.add_argument("--top", type=cli.count("--top"), default=10, help="latents to list (default 10)")
    an.add_argument("--snippets", type=cli.count("--snippets", 0), default=3, help="top-activating snippets per latent (default 3)")
    ze = p.add_argument_group("--zero: EM rate with latents zeroed (pair: the store's, or --pair/--base/--finetuned)")
    ze.add_argument("--zero", default=None, help="latents to zero while measuring EM (comma-separated, or 'top'); "
                    "the control zeroes as many random latents that fire on the store")
    ze.add_argument("--n", type=cli.count("--n"), default=25, help="samples per question for --zero (default 25)")
    ze.add_argument("--questions", default=None, help="question set for --zero (default: the pair's)")
    ze.add_argument("--ids", default=None, help="comma-separated question ids to keep")
    ze.add_argument("--max-new-tokens", type=cli.count("--max-new-tokens"), default=None, help="answer length (default: the pair's)")
    ze.add_argument("--sample-batch", type=cli.count("--sample-batch"), default=None, help="sequences per batch (default: the pair's)")
    ze.add_argument("--out", default=None, help="folder for --zero's answers and judgements (resumable; "
                    "default <store>/sae-zero)")
    cli.add_pair_args(p)
    cli.add_judge_args(p)
    cli.add_engine_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from emi.activations.store import Store
    from emi.directions.direction import Direction
    from emi.models.loading import default_device

    args.device = args.device or default_device()
    if args.engine != "in-process" and not args.zero:
        raise cli.ConfigError(f"--engine {args.engine} samples answers for --zero; add --zero LATENTS, or drop --engine")
    store = Store.open(args.store)
    store.check_layers([args.layer])
    direction = None
    if args.direction:  # checked before any training, so a wrong file costs nothing
        direction = Direction.load(args.direction)
        direction.check_fits(store.d_model, what=f"the store {args.store!r}")
        if args.layer not in direction.layers:
            raise cli.ConfigError(f"the direction {args.direction!r} has no vector for layer {args.layer} "
                                  f"(it has layers {direction.layers})")
    zero = _zero_plan(args, store) if args.zero else None  # pair, judge and questions before the SAE trains
    # --engine is checked (for vllm: its environment) before the SAE trains, and its server is
    # started only when --zero samples
    logs = Path(args.out or store.path / "sae-zero") / "vllm-logs"
    with cli.engine_session(args, logs) if args.zero else contextlib.nullcontext() as engine:
        return _analyse(args, store, direction, engine, zero)


def _analyse(args, store, direction, engine, zero) -> int:  # noqa: ANN001
    from emi.core.errors import EmiError
    from emi.directions.direction import extract
    from emi.directions.sae import SAETrainSpec, diff_latents, latent_direction, obtain_sae, quality

    spec = SAETrainSpec(args.d_sae, args.architecture, args.k, args.l1, args.steps, args.batch_size, seed=args.seed)
    sae, where = obtain_sae(store, args.layer, spec, args.sae, args.release, args.sae_id, args.train, args.device)
    q = quality(sae, store, args.layer)
    print(f"SAE {where}: d_sae {sae.cfg.d_sae}, explained variance {q['explained_variance']:.3f}, "
          f"L0 {q['l0']:.1f}, dead {100 * q['dead_fraction']:.1f}% (on {q['rows']} rows of layer {args.layer})")
    if direction is None:
        try:
            direction = extract(store, "mean-diff", "response", role="finetuned", layers=[args.layer]).direction
        except EmiError as exc:
            print(f"(no mean-diff direction to compare with: {exc})", file=sys.stderr)
    top = diff_latents(sae, store, args.layer, args.positions, args.top, direction)
    fmt = lambda v: "  n/a" if v != v else f"{v:+.3f}"  # noqa: E731
    cli.print_table([{"latent": r["latent"], "diff": fmt(r["diff"]), "d": fmt(r["effect_size"]),
                      "base": f"{r['base']:.3f}", "ft": f"{r['finetuned']:.3f}", "mis": fmt(r["misaligned_minus_aligned"]),
                      "cos": fmt(r["cosine"])} for r in top],
                    [("latent", "latent"), ("diff", "finetuned - base"), ("d", "effect size"), ("base", "base mean"),
                     ("ft", "finetuned mean"), ("mis", "misaligned - aligned"), ("cos", "cos(decoder, direction)")])
    sae_dir = Path(where) if Path(where).is_dir() else store.path / "sae-pretrained"
    saved = []
    for r in top[:3]:  # decoder rows as emi direction artifacts: python -m emi.steer --direction FILE
        d = latent_direction(sae, r["latent"], args.layer, store, {"sae": where, "diff": r["diff"]})
        saved.append(str(d.save(sae_dir / f"latent-{r['latent']}")))
    print(f"decoder directions: {', '.join(saved)}", file=sys.stderr)
    if args.snippets:
        _print_snippets(sae, store, args.layer, [r["latent"] for r in top[:3]], args.snippets)
    if args.zero:
        _zero_report(args, store, sae, [r["latent"] for r in top[:1]] if args.zero == "top"
                     else _latents(args.zero, sae.cfg.d_sae), q["live"], where, engine, zero)
    return 0


def _latents(text: str, d_sae: int) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise cli.ConfigError(f"--zero takes 'top' or comma-separated latent indices, found {text!r}") from None
    bad = [x for x in out if not 0 <= x < d_sae]
    if not out or bad:
        raise cli.ConfigError(f"--zero: latent(s) {bad or text!r} out of range; the SAE has latents 0..{d_sae - 1}")
    return out


def _print_snippets(sae, store, layer: int, latents: list[int], n: int) -> None:  # noqa: ANN001
    from emi.directions.sae import top_snippets
    from emi.models.loading import load_tokenizer

    prov = store.manifest.get("provenance", {}).get("models", {})
    tok_src = next((m.get("resolved") for m in prov.values() if m.get("resolved")), None)
    if not tok_src:
        return
    tok = load_tokenizer(tok_src)
    for latent in latents:
        print(f"\nlatent {latent}:")
        for s in top_snippets(sae, store, layer, latent, tok, n):
            print(f"  {s['activation']:7.3f}  {s['snippet']}")


def _zero_plan(args, store):  # noqa: ANN001, ANN202
    """--zero's pair (checked from its configs), judge (probed) and questions, before anything trains."""
    from emi.behaviour.questions import load_questions
    from emi.models.registry import pair_of_store

    spec = cli.pair_spec(args) if args.pair or args.base else pair_of_store(store.manifest)
    qs = load_questions(args.questions or spec.kit.eval_questions, ids=args.ids)
    judge = cli.make_judge_from_args(args, spec.kit.judge)
    cli.plan_from_args(args, ("finetuned",), spec=spec)
    return spec, judge, qs


def _zero_report(args, store, sae, latents: list[int], live: list[int], where: str, engine,  # noqa: ANN001
                 zero) -> None:  # noqa: ANN001
    from emi.behaviour.sampling import SamplingConfig
    from emi.experiments.sae_zero import zero_latents
    from emi.models.loading import load_pair

    spec, judge, qs = zero
    cfg = SamplingConfig(n=args.n, max_new_tokens=args.max_new_tokens or spec.kit.max_new_tokens,
                         batch_size=args.sample_batch or spec.kit.batch_size, seed=args.seed)
    out = Path(args.out or store.path / "sae-zero")
    pair = load_pair(spec, roles=("finetuned",), device=args.device, dtype=args.dtype, device_map=args.device_map)
    results = zero_latents(pair.finetuned, sae, args.layer, latents, live, qs, cfg, judge, out, where, engine)
    cli.print_engines([(name, eng) for name, eng, _ in results], engine)
    rows = [{"c": name, "em": s.em.fmt(), "coh": s.coherence.fmt(), "k": f"{s.em.k}/{s.em.n}"} for name, _, s in results]
    print(f"\nEM with SAE latents zeroed at layer {args.layer} (pair {spec.name}, judge {judge.name}, "
          f"{len(qs)} questions x {cfg.n}, seed {cfg.seed}; answers in {out})")
    cli.print_table(rows, [("c", "finetuned model"), ("em", "EM rate (95% CI)"), ("k", "misaligned/coherent"),
                           ("coh", "coherent (95% CI)")])


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
