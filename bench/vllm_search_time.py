"""Where the time of tests/diffing/test_vllm_search.py goes: its two emi.diff calls (on vLLM, then
in-process), with the vLLM server's start (``wait_ready``) and stop timed inside the first.

    python bench/vllm_search_time.py OUT_DIR     # needs .venv-vllm (make vllm)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from emi import diff
from emi.engines.vllm import launcher


def main(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.diffing.test_vllm_search import ARGS

    cls = launcher.Server
    ready: list[float] = []
    stops: list[float] = []
    wait, stop = cls.wait_ready, cls.stop

    def timed_wait(self: launcher.Server, timeout: float) -> None:
        t = time.monotonic()
        wait(self, timeout)
        ready.append(time.monotonic() - t)

    def timed_stop(self: launcher.Server, grace: float = 20.0) -> None:
        t = time.monotonic()
        stop(self, grace)
        stops.append(time.monotonic() - t)

    cls.wait_ready, cls.stop = timed_wait, timed_stop  # type: ignore[method-assign]
    t0 = time.monotonic()
    assert diff.main([*ARGS, "--engine", "vllm", "--out", str(out / "vllm")]) == 0
    t1 = time.monotonic()
    assert diff.main([*ARGS, "--out", str(out / "hf")]) == 0
    t2 = time.monotonic()
    print(f"vllm run {t1 - t0:.1f} s (server start {sum(ready):.1f} s in {len(ready)} start(s), stop "
          f"{sum(stops):.1f} s); in-process run {t2 - t1:.1f} s; all but the start {t2 - t0 - sum(ready):.1f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-vllm-search"))
