"""Test-only fault injection, kept out of emi: run an emi command in this process and SIGKILL it in
the middle of its n-th write.

    python -m tests.faults N MODULE [ARGS...]

Write points are every atomic file write (``emi.core.atomic.write_atomic``: shards, manifests, texts,
results, summaries, directions) and every JSONL append (``emi.core.jsonl.append``: answers,
judgements). At the N-th point the process half-writes (a temporary file that is never renamed,
or half a JSONL line) and kills itself with SIGKILL, as a power cut or an OOM kill would. N = 0
runs to the end and prints ``FAULT_POINTS <count>`` on stderr. Under torchrun, EMI_FAULT_RANK=r
kills rank r only: ``torchrun --nproc-per-node 2 -m tests.faults N emi.cache ...``.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path


def arm(n: int) -> list[int]:
    """Patch emi's two writers (before any other emi module binds them); returns the counter."""
    import emi.core.atomic

    count = [0]
    real_atomic = emi.core.atomic.write_atomic

    def hit() -> bool:
        count[0] += 1
        return count[0] == n

    def write_atomic(path: Path, write):  # noqa: ANN001, ANN202
        if hit():
            write(path.with_name(f".{path.name}.tmp-{os.getpid()}"))  # written, never renamed
            os.kill(os.getpid(), signal.SIGKILL)
        return real_atomic(path, write)

    def append(path, records):  # noqa: ANN001, ANN202
        records = list(records)
        if hit() and records:
            text = "".join(__import__("json").dumps(r) + "\n" for r in records)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text[: max(1, len(text) // 2)])  # a torn line
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_append(path, records)

    emi.core.atomic.write_atomic = write_atomic  # before emi.core.jsonl and emi.activations.store bind it
    import emi.core.jsonl

    real_append = emi.core.jsonl.append
    emi.core.jsonl.append = append
    return count


def main() -> None:
    n, module, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if os.environ.get("EMI_FAULT_RANK") not in (None, os.environ.get("RANK")):
        n = 0  # under torchrun: only the named rank is killed
    count = arm(n)
    sys.argv = [module, *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    print(f"FAULT_POINTS {count[0]}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
