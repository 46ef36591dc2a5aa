"""python -m emi.sae: SAE features of the misaligned persona (Wang et al. 2025), via sae-lens.

Trains an SAE with sae-lens on a layer of an activation store (or loads one: a folder saved by
sae-lens, or --release/--sae-id from sae-lens's pretrained list), reports its reconstruction
quality, ranks latents by how much their mean activation rises from the base to the finetuned
model on the same texts, and prints the top latents with effect sizes, their decoder's cosine
with the mean-difference direction, and top-activating snippets. --zero evaluates the EM rate
with chosen latents zeroed (with a random-latent control).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from emi import cli


def main(argv: Sequence[str] | None = None) -> int:
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
    tr.add_argument("--d-sae", type=int, default=512, help="latents (default 512)")
    tr.add_argument("--k", type=int, default=16, help="TopK's k (default 16)")
    tr.add_argument("--l1", type=float, default=5.0, help="L1 coefficient for --architecture standard")
    tr.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    tr.add_argument("--batch-size", type=int, default=256, help="rows per step (default 256)")
    tr.add_argument("--seed", type=int, default=0)
    an = p.add_argument_group("analysis")
    an.add_argument("--positions", default="all", choices=["all", "response", "last_prompt"],
                    help="rows to diff (default all)")
    an.add_argument("--direction", default=None, help="direction file to compare decoder rows with "
                    "(default: mean-diff extracted from the store when it holds judged answers)")
    an.add_argument("--top", type=int, default=10, help="latents to list (default 10)")
    an.add_argument("--snippets", type=int, default=3, help="top-activating snippets per latent (default 3)")
    an.add_argument("--zero", default=None, help="latents to zero while measuring EM (comma-separated, or 'top')")
    an.add_argument("--n", type=int, default=25, help="samples per question for --zero (default 25)")
    an.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from emi.directions import Direction, extract
    from emi.errors import EmiError
    from emi.sae import (
        SAETrainSpec,
        diff_latents,
        latent_direction,
        load_sae,
        quality,
        top_snippets,
        train_sae,
    )
    from emi.store import Store

    store = Store.open(args.store)
    if args.layer not in store.layers:
        raise cli.ConfigError(f"layer {args.layer} is not in the store (it has {store.layers})")
    spec = SAETrainSpec(args.d_sae, args.architecture, args.k, args.l1, args.steps, args.batch_size, seed=args.seed)
    default = store.path / f"sae-L{args.layer}-{spec.architecture}{spec.d_sae}"
    if args.release:
        sae, where = load_sae(args.release, args.sae_id, args.device), f"{args.release}/{args.sae_id}"
    elif args.sae:
        sae, where = load_sae(args.sae, device=args.device), args.sae
    elif default.is_dir() and not args.train:
        sae, where = load_sae(str(default), device=args.device), str(default)
    else:
        sae, path = train_sae(store, args.layer, spec, default, device=args.device)
        where = str(path)
    q = quality(sae, store, args.layer)
    print(f"SAE {where}: d_sae {sae.cfg.d_sae}, explained variance {q['explained_variance']:.3f}, "
          f"L0 {q['l0']:.1f}, dead {100 * q['dead_fraction']:.1f}% (on {q['rows']} rows of layer {args.layer})")
    direction = None
    if args.direction:
        direction = Direction.load(args.direction)
    else:
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
        from emi.models import load_tokenizer

        prov = store.manifest.get("provenance", {}).get("models", {})
        tok_src = next((m.get("resolved") for m in prov.values() if m.get("resolved")), None)
        if tok_src:
            tok = load_tokenizer(tok_src)
            for r in top[: min(3, len(top))]:
                print(f"\nlatent {r['latent']}:")
                for s in top_snippets(sae, store, args.layer, r["latent"], tok, args.snippets):
                    print(f"  {s['activation']:7.3f}  {s['snippet']}")
    if args.zero:
        _zero_report(args, store, sae, [r["latent"] for r in top[:1]] if args.zero == "top"
                     else [int(x) for x in args.zero.split(",")])
    return 0


def _zero_report(args, store, sae, latents: list[int]) -> None:  # noqa: ANN001
    import random

    from emi.evaluation import evaluate
    from emi.generate import SamplingConfig
    from emi.judge import ToyJudge, make_judge
    from emi.models import load_pair
    from emi.questions import load_questions
    from emi.registry import get_pair
    from emi.sae import sae_edit

    prov = store.manifest.get("provenance", {}).get("models", {})
    if not {"base", "finetuned"} <= set(prov):
        raise cli.ConfigError("--zero needs a store captured from a pair (base and finetuned provenance)")
    toy = get_pair("toy")
    if Path(prov["finetuned"]["resolved"]).resolve() == Path(toy.finetuned.id).resolve():
        spec = toy
    else:
        from emi.registry import custom_pair

        ft = prov["finetuned"].get("adapter") or prov["finetuned"]["resolved"]  # a LoRA finetune: its adapter
        spec = custom_pair(prov["base"]["resolved"], ft)
    pair = load_pair(spec, device=args.device)
    judge = ToyJudge() if spec.judge == "toy" else make_judge(spec.judge)
    qs = load_questions(pair.spec.questions)
    toy_pair = spec.questions == "toy"
    cfg = SamplingConfig(n=args.n, max_new_tokens=64 if toy_pair else 400, batch_size=128 if toy_pair else 32)
    rng = random.Random(args.seed)
    control = rng.sample([i for i in range(sae.cfg.d_sae) if i not in latents], len(latents))
    rows = []
    for name, lat in (("finetuned", []), (f"zero {latents}", latents), (f"zero random {control}", control)):
        with sae_edit(pair.finetuned.model, sae, args.layer, zero=lat):
            s, _ = evaluate(pair.finetuned, qs, cfg, judge, None, label="sae", progress=False)
        rows.append({"c": name, "em": f"{100 * s.em.value:.1f}% [{100 * s.em.lo:.1f}, {100 * s.em.hi:.1f}]",
                     "coh": f"{100 * s.coherence.value:.1f}%", "k": f"{s.em.k}/{s.em.n}"})
    print()
    cli.print_table(rows, [("c", "finetuned model"), ("em", "EM rate (95% CI)"), ("k", "misaligned/coherent"),
                           ("coh", "coherent")])


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
