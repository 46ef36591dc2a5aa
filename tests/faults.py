"""Test-only fault injection, kept out of emi: run an emi command in this process and SIGKILL it in
the middle of its n-th write.

    python -m tests.faults N MODULE [ARGS...]

Write points are every atomic file write (``emi.core.atomic.write_atomic``: shards, manifests, texts,
results, summaries, directions) and every JSONL append (``emi.core.jsonl.append``: answers,
judgements). At the N-th point the process half-writes (a temporary file that is never renamed,
or half a JSONL line) and kills itself with SIGKILL, as a power cut or an OOM kill would. N = 0
runs to the end and prints ``FAULT_POINTS <count>`` on stderr. Under torchrun, EMI_FAULT_RANK=r
kills rank r only: ``torchrun --nproc-per-node 2 -m tests.faults N emi.cache ...``.

    python -m tests.faults --serve

is a fork server for the tests that start a command tens of times (:class:`ForkServer`; a fresh
process spends most of its time importing torch and transformers, then tearing them down): it
imports the third-party libraries the commands use (``PRELOAD``) and nothing of emi, runs nothing,
and forks one child per ``python -m MODULE ARGS`` request. A ``tests.faults`` child does what a
fresh ``python -m tests.faults N MODULE ARGS`` does from there on (emi is imported, patched and
run in the child), so each run starts with nothing of the command done, and its own SIGKILL ends
it as before. The children of one server share its hash seed and the random state ``random`` and
numpy drew at import: a test compares them with a reference run in a fresh process.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
from pathlib import Path

# What the commands import from outside emi, most of a fresh process's time (tests/faults.py's
# docstring): imported once by the fork server, before any fork. Import only: no tensor op, no
# tokenizer call, no thread pool (OMP_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false, as in conftest).
PRELOAD = (
    "numpy", "scipy", "pandas", "yaml", "einops", "jaxtyping", "tqdm.auto", "torch", "safetensors.torch",
    "tokenizers", "statsmodels.stats.proportion", "datasets", "transformers", "transformers.modeling_utils",
    "transformers.activations", "transformers.modeling_layers", "transformers.masking_utils",
    "transformers.generation.utils", "transformers.generation.candidate_generator",
    "transformers.tokenization_utils_tokenizers", "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto", "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.qwen2.tokenization_qwen2", "transformers.trainer", "transformers.training_args",
    "accelerate", "peft", "sae_lens",
)
# Threads the imports may start that survive a fork by design: pyarrow's jemalloc (imported by pandas
# and datasets) stops its page-purging thread around fork and the child runs without it.
FORK_SAFE_THREADS = ("jemalloc_bg_thd",)


def command_env() -> dict[str, str]:
    """The environment the fault tests run commands in (offline, this checkout importable)."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": root, "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one compute thread (tests/conftest.py)


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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return serve()
    n, module, args = int(argv[0]), argv[1], argv[2:]
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


def _unsafe_threads() -> list[str]:
    """Names of this process's threads other than the main one that a fork would leave broken."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        raise RuntimeError("the fork server lists its threads in /proc/self/task (Linux)")
    names = [(tasks / t / "comm").read_text().strip() for t in os.listdir(tasks) if int(t) != os.getpid()]
    return [n for n in names if n not in FORK_SAFE_THREADS]


def serve() -> None:
    """Read one JSON request a line on stdin ({"argv", "env", "cwd", "stdout", "stderr"}), fork,
    answer {"pid"} and then {"status"} (the child's wait status) on stdout."""
    for name in PRELOAD:
        importlib.import_module(name)
    if any(name == "emi" or name.startswith("emi.") for name in sys.modules):
        raise RuntimeError("the fork server imported emi: a child must import it after arm() patches the writers")
    gc.freeze()  # what the imports made is never collected, so a child's collections (its exit's too) copy no pages
    reply = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        if threads := _unsafe_threads():  # a child gets only the forking thread: a lock another held stays held
            raise RuntimeError(f"the fork server has other threads after its imports: {threads}")
        reply.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)  # ends the process (sys.exit, SIGKILL, or a traceback): never returns here
            os._exit(70)
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"status": status}) + "\n")
        reply.flush()


def _child(req: dict) -> None:
    """Become ``python -m MODULE ARGS`` (``argv``) run in ``cwd`` with ``env`` added to the server's
    environment and its output to two files."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 (the parent's may hold read-ahead)
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.path[0] = req["cwd"]  # as `python -m` puts the working folder first
    flag, module, *args = req["argv"]
    if flag != "-m":
        raise ValueError(f"the fork server runs `-m MODULE ARGS`, not {req['argv']}")
    if module == "tests.faults":
        main(args)  # this module is the server's __main__ already, as it is a fresh `python -m tests.faults`'s
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)


class ForkServer:
    """One ``python -m tests.faults --serve`` process; :meth:`run` is ``subprocess.run([python, *argv],
    capture_output=True, text=True)`` for ``argv = ["-m", MODULE, ...]``, served by a fork."""

    def __init__(self, env: dict[str, str], cwd: Path, scratch: Path) -> None:
        self.cwd, self.scratch, self.runs, self.buf = cwd, scratch, 0, b""
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.faults", "--serve"], env=env, cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _reply(self, timeout: float | None) -> dict:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:  # read the pipe itself: a buffered reader could hold a reply select misses
            if not select.select([fd], [], [], timeout)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the fork server ended (exit status {self.proc.wait()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        assert self.proc.stdin is not None
        self.runs += 1
        out, err = (self.scratch / f"run-{self.runs}.{s}" for s in ("out", "err"))
        req = {"argv": argv, "env": env or {}, "cwd": str(cwd or self.cwd), "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        pid = self._reply(None)["pid"]
        try:
            status = self._reply(timeout)["status"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._reply(None)
            raise subprocess.TimeoutExpired(argv, timeout or 0) from None
        res = subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), out.read_text(), err.read_text())
        out.unlink()
        err.unlink()
        return res

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


if __name__ == "__main__":
    main()
