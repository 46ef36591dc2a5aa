"""vLLM that emi starts itself (``--engine vllm``): every condition runs there, one checkpoint's
server at a time (emi.engines.vllm.launcher), with vllm-lens steering and hooks per request
(emi.engines.vllm.lens)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emi.behaviour.sampling import Answer, Messages, SamplingConfig
from emi.core.errors import ConfigError
from emi.engines.base import EngineDescription, EngineError
from emi.engines.fingerprint import Fingerprints
from emi.engines.served import Served, pair_adapters
from emi.engines.vllm.launcher import Launcher, Server, adapter_name, lora_rank
from emi.engines.vllm.lens import complete_ids
from emi.models.chat import CHAT, Render

if TYPE_CHECKING:
    from emi.activations.readers import ReaderFactory


@dataclass
class VllmEngine:
    """vLLM that emi starts itself (``--engine vllm``), one checkpoint at a time: :meth:`plan`
    says which adapters each checkpoint serves, :meth:`sample` starts the server a condition needs
    (stopping the previous one), :meth:`close` stops it. Every condition runs here."""

    launcher: Launcher
    concurrency: int = 256
    timeout: float = 3600.0
    name: str = "vllm"
    adapters: dict[str, set[str]] = field(default_factory=dict)  # checkpoint -> adapter folders
    server: Server | None = None  # the one running
    lock: Any = field(default_factory=threading.RLock, repr=False)  # several batches sample at once
    fingerprints: Fingerprints = field(default_factory=Fingerprints, repr=False)

    def __post_init__(self) -> None:
        self.launcher = self.launcher.checked()  # the engine environment, before any model loads

    @property
    def label(self) -> str:
        return "vLLM (started by emi)"

    def describe(self) -> EngineDescription:
        info = self.launcher.info
        assert info is not None
        return {"engine": "vllm", "vllm": info.vllm, "vllm_lens": info.vllm_lens}

    def serves(self, served: Served) -> bool:
        return True

    def readers(self) -> ReaderFactory:
        """Capture through vllm-lens's residual stream on the server of each model's checkpoint."""
        from emi.engines.vllm.capture import VllmReaders

        return VllmReaders(self)

    def prepare(self, pairs: Sequence[Any]) -> None:
        """Serve the pairs' LoRA adapters on the base's server, so one process serves every adapter role."""
        for pair in pairs:
            self.plan(pair_adapters(pair))

    def know(self, models: Sequence[Any]) -> None:
        self.fingerprints.know(*models)

    def plan(self, served: Sequence[Served]) -> None:
        with self.lock:
            for s in served:
                self.adapters.setdefault(s.checkpoint, set()).update([s.adapter] if s.adapter else [])

    def server_for(self, checkpoint: str) -> Server:
        """The server of ``checkpoint`` with every adapter planned for it, started (and the previous
        one stopped) when the running one is another checkpoint's, lacks an adapter, or died. One
        caller at a time: batches sampled at once must share one server, never start one each."""
        with self.lock:
            adapters = sorted(self.adapters.get(checkpoint, set()))
            s = self.server
            if (s is not None and s.checkpoint == checkpoint and set(adapters) <= set(s.adapters.values())
                    and s.alive()):
                return s
            self.close()
            self.server = self.launcher.start(checkpoint, {adapter_name(a): a for a in adapters},
                                              lora_rank(adapters))
            return self.server

    def sample(self, served: Served, tokenizer: Any, messages: Sequence[Messages], cfg: SamplingConfig,
               seed: int, render: Render = CHAT) -> list[Answer]:
        self.plan([served])
        server = self.server_for(served.checkpoint)
        if served.needs_hooks:
            self._check_hooks()
        model = adapter_name(served.adapter) if served.adapter else served.checkpoint
        self.fingerprints.check(f"{server.url}/v1", model, served, self.launcher.dtype, self.describe(),
                                f"the vLLM server (started by emi) for {served.checkpoint}",
                                "this vLLM loads that checkpoint otherwise than transformers does (such as a tied "
                                "embedding head loaded untied); use --engine in-process for it")
        try:
            return complete_ids(f"{server.url}/v1", served, model, tokenizer, messages, cfg, seed, self.concurrency,
                                self.timeout, {}, hooks_ok=True, render=render)
        except Exception as exc:
            if not server.alive():
                raise server.died() from None
            what = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {str(exc)[:300]}"
            raise EngineError(f"the vLLM server for {served.checkpoint} failed a request ({what}); its log says: "
                              f"{server.cause()} (log: {server.log}); re-run the same command to resume: answers "
                              f"already written are kept") from None

    def _check_hooks(self) -> None:
        import sys

        assert self.launcher.info is not None
        py = self.launcher.info.python
        if tuple(py) != tuple(sys.version_info[:2]):
            raise ConfigError(f"ablation at chosen layers, SAE edits and steering at prompt or generated positions send "
                              f"cloudpickled "
                              f"functions to the vLLM server, which "
                              f"needs the same Python there as here ({sys.version_info[0]}.{sys.version_info[1]}), "
                              f"found {py[0]}.{py[1]}; build the engine environment with the same Python "
                              f"(`make vllm PY3=python3.x`)")

    def close(self) -> None:
        with self.lock:
            if self.server is not None:
                self.server.stop()
                self.server = None
