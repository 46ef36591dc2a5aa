"""python -m emi.view: read what the models said, in the browser.

  python -m emi.view runs/demo                     # writes runs/demo/view.html and names it
  python -m emi.view runs/steer-a runs/steer-b --out compare.html
  python -m emi.view runs/demo --project           # each answer's tokens on the run's direction, cached
  python -m emi.view runs/demo --serve             # loopback server for a run in progress
  python -m emi.view runs/demo --inspect logs/     # the run as Inspect eval logs (extra: inspect)

The page is one self-contained HTML file (the data embedded, script and style inlined; it opens
from file:// with no network): the run's table as its command printed it (each cell links to its
answers), the answers with every judge's scores and labels, filters and sorting, side by side
(one question and sample across conditions or runs; two judges by disagreement), each token shaded
by its projection on the direction (after --project), the run's figures. See docs/viewer.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from emi import cli


def parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m emi.view", __doc__)
    p.add_argument("runs", nargs="+", help="run folder(s): the --out of emi.steer, evaluate, trajectory, defences, ...")
    p.add_argument("--out", default=None, help="the page (default: RUN/view.html for one run, view.html for several)")
    p.add_argument("--project", action="store_true",
                   help="first compute each answer's per-token projection on the run's direction at its layer "
                        "(loads the model once; cached in RUN/projections.jsonl, resumable)")
    p.add_argument("--project-role", default="finetuned", choices=["base", "finetuned"],
                   help="the model whose residual stream the answers are read through (default finetuned)")
    p.add_argument("--layer", type=cli.count("--layer", 0), default=None,
                   help="the projection's layer (default: the run's steering layer, else the direction's best)")
    p.add_argument("--direction", default=None, help="a direction file (default: the one the run records)")
    p.add_argument("--device", default=None, help="cuda, cpu, mps for --project (default: cuda when available)")
    p.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 instead, refreshing as answers arrive")
    p.add_argument("--port", type=cli.count("--port", 0), default=0, help="--serve port (default: a free one)")
    p.add_argument("--serve-seconds", type=float, default=3600.0, help="--serve stops after this long (default 1 h)")
    p.add_argument("--inspect", default=None, metavar="DIR",
                   help="also write each run as an Inspect eval log under DIR (pip install 'emi[inspect]')")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from emi.report.view_data import check_runs

    runs = check_runs(args.runs)  # before anything loads or is written
    if args.inspect:
        from emi.report.view_inspect import require_inspect

        require_inspect()
    if args.project:
        from emi.report.view_project import project_runs

        for run in runs:
            done, total = project_runs(run, args.project_role, args.layer, args.direction, args.device)
            print(f"projections: {done}/{total} answers of {run} on the direction", file=sys.stderr)
    if args.inspect:
        from emi.report.view_inspect import write_logs

        for log in write_logs(runs, Path(args.inspect)):
            print(f"wrote Inspect log {log}", file=sys.stderr)
    if args.serve:
        from emi.report.view import serve

        serve(runs, args.port, args.serve_seconds, announce=lambda m: print(m, file=sys.stderr, flush=True))
        return 0
    from emi.report.view import write_page

    out = Path(args.out) if args.out else (runs[0] / "view.html" if len(runs) == 1 else Path("view.html"))
    if not out.parent.is_dir():
        raise cli.ConfigError(f"--out {out}: its folder {out.parent} does not exist; create it or pick another")
    size = write_page(runs, out)
    print(f"wrote {out} ({size / 1e6:.1f} MB); open it in a browser: file://{out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
