"""A server the user runs (``--engine server``): any OpenAI-compatible server, serving checkpoints by
name, one seeded chat completion per answer, with emi's sampling settings: temperature, top-p, max
tokens, and a ``generation_config`` JSON (honoured by `transformers serve`, which otherwise samples
greedily unless the checkpoint says otherwise; other servers ignore it). ``body`` adds
server-specific fields, e.g. vLLM's ``{"top_k": -1, "repetition_penalty": 1.0}`` (or start vLLM with
``--generation-config vllm``, so that the checkpoint's own defaults, such as Qwen2.5-Instruct's top-k
20, do not apply). With ``lens`` (the server has vllm-lens) steering at all positions runs there
too, as completions of token ids (emi.engines.vllm.lens)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from emi.behaviour.answers import Decoded
from emi.behaviour.sampling import Answer, Messages, SamplingConfig
from emi.core.errors import ConfigError
from emi.engines.base import EngineDescription
from emi.engines.fingerprint import Fingerprints
from emi.engines.served import Served
from emi.engines.vllm.lens import complete_ids
from emi.models.chat import CHAT, Render


@dataclass(frozen=True)
class ServerEngine:
    """A server the user runs (``--engine server --engine-url``), serving checkpoints by name;
    ``lens``: it has vllm-lens, so steering conditions sample there too."""

    url: str
    key_env: str = "EMI_ENGINE_API_KEY"
    concurrency: int = 8
    timeout: float = 600.0
    body: dict[str, Any] = field(default_factory=dict)
    lens: bool = False
    name: str = "server"
    # the dtype the server runs at, for the fingerprint's tolerance: emi cannot know a user's server's, so
    # the coarsest (bf16) unless told
    dtype: str = "bfloat16"
    fingerprints: Fingerprints = field(default_factory=Fingerprints, compare=False)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--engine-url must be an http(s) URL of an OpenAI-compatible server (e.g. "
                              f"http://localhost:8000/v1), found {self.url!r}")
        if self.concurrency < 1:
            raise ConfigError(f"--engine-concurrency must be >= 1, found {self.concurrency}")

    def describe(self) -> EngineDescription:
        return {"engine": "server", "url": self.url, "body": self.body, **({"lens": True} if self.lens else {})}

    @property
    def label(self) -> str:
        return f"the server at {self.url}"

    def close(self) -> None:
        """Nothing to stop: the user runs this server."""

    def prepare(self, pairs: Sequence[Any]) -> None:
        """Nothing to plan: the server serves what it serves."""

    def plan(self, served: Sequence[Served]) -> None:
        """Nothing to plan: the server serves what it serves."""

    def know(self, models: Sequence[Any]) -> None:
        self.fingerprints.know(*models)

    def check(self, served: Served) -> None:
        """That the server serves ``served``'s checkpoint as emi loads it (once; emi.engines.fingerprint)."""
        self.fingerprints.check(self.url, served.checkpoint, served, self.dtype, {"url": self.url},
                                self.label, f"point --engine-url at a server that serves {served.checkpoint} (at the "
                                f"dtype emi runs, --dtype), or use --engine in-process", self.body)

    def readers(self) -> None:
        """No capture: an OpenAI-compatible server returns no activations (capture runs in-process)."""
        return None

    def serves(self, served: Served) -> bool:
        """Whether this server can sample the condition: checkpoints always, steering at all positions
        with vllm-lens; never hooks (code execution on a server emi did not start) nor LoRA roles (the server
        would need base and adapter)."""
        st = served.steering
        return served.adapter is None and not served.needs_hooks and (st is None or self.lens)

    def sample(self, served: Served, tokenizer: Any, messages: Sequence[Messages], cfg: SamplingConfig,
               seed: int, render: Render = CHAT) -> list[Answer]:
        self.check(served)
        if served.steering is not None or render != CHAT:  # emi's own prompt ids
            return complete_ids(self.url, served, served.checkpoint, tokenizer, messages, cfg, seed,
                                self.concurrency, self.timeout, self.body, render=render)
        return [Answer(**a) for a in self.chat(served.checkpoint, messages, cfg, seed)]

    def _client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url, api_key=os.environ.get(self.key_env) or "none",
                             timeout=self.timeout, max_retries=5)

    def chat(self, model: str, messages: Sequence[list[dict[str, str]]], cfg: SamplingConfig,
             seed: int) -> list[Decoded]:
        """One answer per conversation, in input order: [{"answer", "n_tokens", "finish"}];
        answer i is sampled with seed ``seed * 100_003 + i`` (deterministic where the server is)."""
        client = self._client()
        greedy = cfg.temperature == 0
        gen = {"do_sample": not greedy, "max_new_tokens": cfg.max_new_tokens,
               "repetition_penalty": cfg.repetition_penalty, "num_beams": 1,
               **({} if greedy else {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0})}

        def one(i: int) -> Decoded:
            try:
                r = client.chat.completions.create(
                    model=model, messages=messages[i], max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                    top_p=cfg.top_p, seed=seed * 100_003 + i,
                    extra_body={"generation_config": json.dumps(gen), **self.body})
            except Exception as exc:  # the client already retried what can be retried
                raise ConfigError(f"the engine server at {self.url} failed for model {model!r}: "
                                  f"{type(exc).__name__}: {str(exc)[:300]}; is it running and serving that model?"
                                  ) from None
            choice = r.choices[0]
            text = (choice.message.content or "").strip()
            # a server with a reasoning parser (vLLM's --reasoning-parser) returns the thought apart: put it
            # back where the model wrote it, so the answer record keeps it in 'thought' and a capture sees it
            thought = getattr(choice.message, "reasoning_content", None) or getattr(choice.message, "reasoning", None)
            if isinstance(thought, str) and thought.strip():
                text = f"<think>\n{thought.strip()}\n</think>\n\n{text}"
            n_tokens = r.usage.completion_tokens if r.usage else None
            return {"answer": text, "n_tokens": n_tokens, "finish": "eos" if choice.finish_reason == "stop" else
                    str(choice.finish_reason), "engine": "server"}

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, range(len(messages))))


def parse_body(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--engine-body must be a JSON object, e.g. '{{\"top_k\": -1}}': {exc}") from None
    if not isinstance(body, dict):
        raise ConfigError(f"--engine-body must be a JSON object, found {type(body).__name__}")
    return body
