"""The backend the ``--engine`` flags name (checked: flags, and for vllm the engine environment,
before any model loads), how a command says which backend sampled each condition, and the
launcher that serves a judge on vLLM."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from emi.core.errors import ConfigError
from emi.engines import in_process
from emi.engines.base import Backend
from emi.engines.fingerprint import Fingerprints, cache_file
from emi.engines.vllm.launcher import Launcher, vllm_dtype, vllm_python


def from_args(args: argparse.Namespace, logs: str | Path) -> Backend | None:
    """The backend of --engine (None: in-process), checked before any model loads."""
    if args.engine != "server" and (args.engine_url or args.engine_lens):
        raise ConfigError("--engine-url (and --engine-lens) is for --engine server; add --engine server, or drop it")
    if args.engine == "server":
        from emi.engines.server import ServerEngine, parse_body

        if not args.engine_url:
            raise ConfigError("--engine server needs --engine-url URL (an OpenAI-compatible server, e.g. "
                              "http://localhost:8000/v1)")
        return ServerEngine(args.engine_url, args.engine_key_env, args.engine_concurrency or 8,
                            body=parse_body(args.engine_body), lens=args.engine_lens,
                            fingerprints=fingerprints(args))
    if args.engine == "vllm":
        from emi.engines.vllm.engine import VllmEngine

        launcher = Launcher(vllm_python(args.vllm_python), vllm_dtype(args.dtype), tuple(shlex.split(args.vllm_args)),
                            Path(logs), args.vllm_port, args.vllm_startup_timeout)
        return VllmEngine(launcher, args.engine_concurrency or 256,
                          fingerprints=fingerprints(args))
    return None


def fingerprints(args: argparse.Namespace) -> Fingerprints:
    """What a served checkpoint is checked against, its verdicts cached beside the pair caches of a
    command that has them (--root); in memory only for the others."""
    return Fingerprints(cache_file(args.root) if hasattr(args, "root") else None)


def where_ran(ran: Sequence[tuple[str, str]], engine: Backend) -> str:
    """``engine: <backend>: <conditions>; ...``: which backend sampled each (condition, engine name)."""
    where: dict[str, list[str]] = {}
    for name, eng in ran:
        where.setdefault(eng, []).append(name)
    label = {engine.name: engine.label, in_process.NAME: in_process.LABEL}
    return "engine: " + "; ".join(f"{label.get(e, e)}: {', '.join(names)}" for e, names in where.items())


def judge_launcher(args: argparse.Namespace) -> Launcher:
    """How emi serves ``--judge-model`` on vLLM: the engine environment of --engine vllm, the judge's
    own --judge-vllm-args, logs under --out (or runs/)."""
    return Launcher(vllm_python(getattr(args, "vllm_python", None)), vllm_dtype("auto"),
                    tuple(shlex.split(getattr(args, "judge_vllm_args", "") or "")),
                    Path(getattr(args, "out", None) or "runs") / "vllm-judge-logs")
