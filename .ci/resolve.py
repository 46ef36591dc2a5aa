"""Check that an unconstrained install of emi resolves to the stack the tests ran on.

``pyproject.toml`` bounds the libraries emi's numbers depend on to the releases the suite has
passed on, and ``constraints.txt`` pins the whole tested set. This asks pip (``--dry-run
--report``, no constraints, nothing installed) what ``pip install -e ".[dev,notebooks]"`` would
give a new user today, and fails when a bounded library resolves to a release other than the
tested pin: the bound admits something untested (a new release inside the range), so the suite
must run on it before the range may admit it. Other packages may drift; they are listed.

Usage: python .ci/resolve.py [--report FILE]   (exit 1 on a mismatch, 2 when pip cannot resolve)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The libraries pyproject.toml bounds to tested releases: each must resolve to its pin.
TESTED = ("torch", "transformers", "transformer-lens", "sae-lens", "nnsight", "peft")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def resolve(report: Path) -> dict[str, str]:
    env = dict(os.environ, PIP_CONSTRAINT="")  # no machine-wide constraint file: what a user gets
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
           "--report", str(report), f"{ROOT}[dev,notebooks]"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        print("resolve: pip could not resolve emi's declared ranges (above); fix pyproject.toml")
        raise SystemExit(2)
    data = json.loads(report.read_text())
    return {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def base(version: str) -> str:
    return version.split("+", 1)[0]  # torch 2.13.0+cpu / +cu128 is the 2.13.0 release


def untested(tested: dict[str, str], got: dict[str, str]) -> list[str]:
    """The bounded libraries that resolve to anything but their tested pin (or are missing)."""
    return [n for n in TESTED if n not in tested or n not in got or base(got[n]) != tested[n]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, help="keep pip's JSON report here")
    args = ap.parse_args(argv)
    tested = pins(ROOT / "constraints.txt")
    with tempfile.TemporaryDirectory() as tmp:
        got = resolve(args.report or Path(tmp) / "report.json")
    bad = untested(tested, got)
    for name in TESTED:
        mark = "MISMATCH" if name in bad else "ok"
        print(f"resolve: {name:18s} tested {tested.get(name, '-'):12s} resolves to {got.get(name, '-'):14s} {mark}")
    drift = sorted(n for n in got if n in tested and n not in TESTED and base(got[n]) != tested[n])
    if drift:
        print("resolve: other packages resolve to releases the suite did not run on (not bounded, "
              "listed for the record): " + ", ".join(f"{n} {got[n]} (tested {tested[n]})" for n in drift))
    if bad:
        print(f"resolve: an unconstrained install gives {', '.join(bad)} at releases the tests did not run "
              "on; run the suite on them and regenerate constraints.txt, or tighten pyproject.toml")
        return 1
    print(f"resolve: the declared ranges resolve to the tested stack ({len(TESTED)} bounded libraries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
