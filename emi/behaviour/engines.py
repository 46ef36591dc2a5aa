"""Sampling through any OpenAI-compatible server (vLLM, SGLang, `transformers serve`).

A server samples a checkpoint as it is, so it serves the conditions whose model is a checkpoint:
the base, the finetune, and the finetune with the direction ablated from every residual writer
(a weight edit: emi exports that checkpoint, see emi.export). Steering adds a vector at chosen
positions and stays in-process. Each answer is one chat-completion request (servers disagree on
``n``), seeded per answer, with emi's sampling settings: temperature, top-p, max tokens, and a
``generation_config`` JSON (honoured by `transformers serve`, which otherwise samples greedily
unless the checkpoint says otherwise; other servers ignore it). ``body`` adds server-specific
fields, e.g. vLLM's ``{"top_k": -1, "repetition_penalty": 1.0}`` (or start vLLM with
``--generation-config vllm``, so that the checkpoint's own defaults, such as Qwen2.5-Instruct's
top-k 20, do not apply).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from emi.behaviour.sampling import SamplingConfig
from emi.core.errors import ConfigError


@dataclass(frozen=True)
class ServerEngine:
    url: str
    key_env: str = "EMI_ENGINE_API_KEY"
    concurrency: int = 8
    timeout: float = 600.0
    body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--engine-url must be an http(s) URL of an OpenAI-compatible server (e.g. "
                              f"http://localhost:8000/v1), found {self.url!r}")
        if self.concurrency < 1:
            raise ConfigError(f"--engine-concurrency must be >= 1, found {self.concurrency}")

    def describe(self) -> dict[str, Any]:
        return {"engine": "server", "url": self.url, "body": self.body}

    def _client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url, api_key=os.environ.get(self.key_env) or "none",
                             timeout=self.timeout, max_retries=5)

    def sample(self, model: str, messages: Sequence[list[dict[str, str]]], cfg: SamplingConfig,
               seed: int) -> list[dict[str, Any]]:
        """One answer per conversation, in input order: [{"answer", "n_tokens", "finish"}];
        answer i is sampled with seed ``seed * 100_003 + i`` (deterministic where the server is)."""
        client = self._client()
        greedy = cfg.temperature == 0
        gen = {"do_sample": not greedy, "max_new_tokens": cfg.max_new_tokens,
               "repetition_penalty": cfg.repetition_penalty, "num_beams": 1,
               **({} if greedy else {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0})}

        def one(i: int) -> dict[str, Any]:
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
