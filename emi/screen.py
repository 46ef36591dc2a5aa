"""python -m emi.screen DATA --direction FILE: rank a training set's examples by their projection on
the persona direction (mean over assistant tokens, at the direction's layer, read by the pair's base:
the model about to be finetuned on it), and report how well that flags the harmful ones where lines
carry "harmful": true/false (AUROC, precision among the top k = the number of harmful examples).

  python -m emi.screen data.jsonl --pair PAIR                     # the pair's shipped direction
  python -m emi.screen data.jsonl --base Qwen/Qwen2.5-7B-Instruct --direction d.safetensors --top 20

Writes scores.jsonl (one line per example, in DATA's order: line, score, rank, harmful) and screen.json
under --out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emi import cli


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.screen", __doc__)
    p.add_argument("data", help="chat JSONL: one {\"messages\": [...], \"harmful\": optional bool} per line")
    cli.add_pair_args(p)
    p.add_argument("--role", default="base", choices=["base", "finetuned"], help="which model reads the data (base)")
    p.add_argument("--direction", default=None, help="direction file (default: the pair's shipped one)")
    p.add_argument("--layer", type=int, default=None, help="layer (default: the direction's best)")
    p.add_argument("--max-len", type=int, default=1024, help="tokens per chat (default 1024)")
    p.add_argument("--max-examples", type=int, default=None, help="read only the first N lines of DATA")
    p.add_argument("--top", type=int, default=10, help="examples to print, highest first (default 10)")
    p.add_argument("--out", default=None, help="output folder (default runs/screen-<data name>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from emi.core import jsonl, locks
    from emi.core.atomic import write_json
    from emi.directions.direction import Direction
    from emi.training.data import load_chats
    from emi.training.screening import projections, screen

    data = load_chats(args.data, args.max_examples)
    spec = cli.pair_spec(args)
    if not (args.direction or spec.kit.direction):
        raise cli.ConfigError(f"pair {spec.name!r} ships no direction; pass --direction FILE "
                              f"(python -m emi.extract makes one)")
    direction = Direction.load(args.direction or spec.kit.direction)
    plan = cli.plan_from_args(args, (args.role,), spec=spec)  # configs only: no weights yet
    from emi.directions.direction import check_fits_pair
    check_fits_pair(args.direction or spec.kit.direction, plan, f"the model ({spec.name!r})")
    if args.layer is not None and args.layer not in direction.layers:
        raise cli.ConfigError(f"--layer {args.layer}: the direction has no vector there (it has layers "
                              f"{direction.layers}); pass one of those")
    lm = cli.load_pair_from_args(args, roles=(args.role,))[args.role]
    scores = projections(lm, data.records, direction, args.layer, args.max_len)
    result = screen(scores, [r.harmful for r in data.records])
    rank = {i: k + 1 for k, i in enumerate(result.ranking())}
    out = Path(args.out or f"runs/screen-{Path(args.data).stem}")
    with locks.exclusive(out):
        jsonl.write(out / "scores.jsonl", ({"line": r.line, "score": float(s), "rank": rank[i], "harmful": r.harmful}
                                           for i, (r, s) in enumerate(zip(data.records, scores, strict=True))))
        write_json(out / "screen.json", {**result.row(), "data": {"path": data.path, "sha256": data.sha256},
                                         "direction": direction.summary(), "layer": args.layer or direction.best_layer,
                                         "model": lm.provenance})
    rows = [{"rank": str(k + 1), "line": str(data.records[i].line), "score": f"{scores[i]:+.3f}",
             "harmful": {True: "yes", False: "no", None: "?"}[data.records[i].harmful],
             "answer": data.records[i].messages[-1][1][:70]} for k, i in enumerate(result.ranking()[: args.top])]
    cli.print_table(rows, [("rank", "rank"), ("line", "line"), ("score", "projection"), ("harmful", "harmful"),
                           ("answer", "last answer")])
    if result.n_harmful and result.n_harmless:
        print(f"flags the harmful examples with AUROC {result.auroc:.3f} ({result.n_harmful} harmful, "
              f"{result.n_harmless} harmless); precision among the top {result.n_harmful}: {result.precision_at_k:.2f}")
    else:
        print("no harmful/harmless labels in DATA (\"harmful\": true/false), so no AUROC")
    print(f"wrote {out}/scores.jsonl, screen.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
