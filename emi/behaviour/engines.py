"""Sampling engines outside emi's process: any OpenAI-compatible server (``--engine server``) and
vLLM that emi starts itself (``--engine vllm``, emi.behaviour.vllm_server).

A condition is sampled as a :class:`Served`: the checkpoint the server loads (the base, the
finetune, or the finetune with the direction ablated from every residual writer, a weight edit
emi exports, see emi.export), an optional LoRA adapter served on it, and what vllm-lens does
per request: a steering vector at all positions (``apply_steering_vectors``, a [layer, d_model]
vector) and, on servers emi starts on loopback only, hooks (``apply_hooks``: steering at the
prompt's or the generated tokens, ablation at chosen layers, an SAE's latents zeroed (a
torch.export program file the server reads); functions cloudpickled into the server, i.e. code
execution there; emi.behaviour.vllm_hooks). Prompts go as token ids of emi's
chat template (so the engine sees emi's exact prompt, and emi knows its length) and answers come
back as token ids that emi decodes as it decodes its own.

``--engine server``: one seeded chat completion per answer, with emi's sampling settings:
temperature, top-p, max tokens, and a ``generation_config`` JSON (honoured by `transformers
serve`, which otherwise samples greedily unless the checkpoint says otherwise; other servers
ignore it). ``body`` adds server-specific fields, e.g. vLLM's ``{"top_k": -1,
"repetition_penalty": 1.0}`` (or start vLLM with ``--generation-config vllm``, so that the
checkpoint's own defaults, such as Qwen2.5-Instruct's top-k 20, do not apply). With ``lens``
(the server has vllm-lens) steering at all positions runs there too, as completions of token ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from emi.behaviour.sampling import Answer, Messages, SamplingConfig
from emi.behaviour.vllm_server import EngineError
from emi.core.errors import ConfigError
from emi.models.chat import CHAT, Render, prompt_ids


@dataclass(frozen=True, eq=False)
class Steering:
    """What steering adds after each of ``layers``: ``deltas[i]`` after ``layers[i]``, at ``positions``."""

    layers: tuple[int, ...]
    deltas: Float[torch.Tensor, "layer d_model"]
    positions: str = "all"  # all | prompt | generated


@dataclass(frozen=True, eq=False)
class Ablation:
    """The unit direction ``u`` projected out of the residual stream after each of ``layers``."""

    layers: tuple[int, ...]
    u: Float[torch.Tensor, " d_model"]


@dataclass(frozen=True, eq=False)
class Program:
    """An edit of the residual stream after ``layer``: ``h + f(h)``, ``f`` a torch.export program
    file (an SAE's latents zeroed, emi.directions.sae.export_edit) that the server reads."""

    layer: int
    path: str


@dataclass(frozen=True, eq=False)
class Served:
    """What an engine samples for one condition."""

    checkpoint: str  # the folder (absolute) or hub id the server loads
    adapter: str | None = None  # a LoRA adapter folder served on it
    steering: Steering | None = None
    ablation: Ablation | None = None
    program: Program | None = None

    def key(self) -> str | dict[str, Any]:
        """What answers are keyed by besides the condition (whose identity has the intervention):
        the checkpoint (as answers sampled before adapters were served were keyed), and its adapter."""
        return self.checkpoint if self.adapter is None else {"checkpoint": self.checkpoint, "adapter": self.adapter}

    @property
    def needs_lens(self) -> bool:
        return self.steering is not None or self.ablation is not None or self.program is not None

    @property
    def needs_hooks(self) -> bool:
        """Whether vllm-lens must run emi's functions in the server (not a steering vector alone)."""
        st = self.steering
        return self.ablation is not None or self.program is not None or (st is not None and st.positions != "all")


def local(ident: str) -> str:
    """A folder by its absolute path (as a server is asked for it), a hub id as it is."""
    return str(Path(ident).resolve()) if Path(ident).exists() else ident


def plain(lm: Any) -> Served:
    """A loaded model (emi.models.loading.LoadedModel) as a server loads it: its checkpoint, and its
    LoRA adapter unless the role switches it off (a LoRA pair's base)."""
    prov = lm.provenance
    adapter = prov.get("adapter") if lm.adapter_enabled is not False else None
    return Served(local(str(prov.get("resolved") or lm.spec.id)), local(adapter) if adapter else None)


def pair_adapters(pair: Any) -> list[Served]:
    """The LoRA adapters each checkpoint serves, from the pair's spec (a PairSpec, or a loaded pair's:
    before any model loads), so that vLLM starts once for a LoRA pair's base and adapter roles."""
    from emi.models.loading import locate

    spec = getattr(pair, "spec", pair)
    out = []
    for role in ("finetuned", "control"):
        s = getattr(spec, role, None)
        if s is None:
            continue
        kind, where = locate(s.id, s.revision)
        adapter = where if kind == "adapter" else s.adapter
        if adapter:
            base = locate(spec.base.id, spec.base.revision)[1]
            out.append(Served(local(base), local(locate(adapter, s.adapter_revision)[1])))
    return out


def prepare(engine: Any, *pairs: Any) -> None:
    """Before pairs' roles sample on vLLM (loaded pairs or PairSpecs): serve their LoRA adapters on
    the base's server, so one process serves every adapter role (and every adapter of a
    trajectory)."""
    if isinstance(engine, VllmEngine):
        for pair in pairs:
            engine.plan(pair_adapters(pair))


def bind(engine: Any, lm: Any, served: Served | None = None) -> tuple[Bound | None, dict[str, Any] | None]:
    """``engine`` bound to ``lm`` (as it is, or as ``served``) and the identity its answers are keyed
    by; (None, None) without an engine or where it does not serve that: in-process, keyed as before."""
    served = served or plain(lm)
    if engine is None or not engine.serves(served):
        return None, None
    if isinstance(engine, VllmEngine):
        engine.plan([served])
    return (Bound(engine, served, lm.tokenizer),
            {"model": lm.identity(), "engine": engine.describe(), "served": served.key()})


def wire_tensor(t: torch.Tensor) -> dict[str, Any]:
    """vllm-lens's JSON form of a tensor (its ``serialize_tensor``): zstd-compressed float32 bytes in
    base64 (a vector repeated over positions compresses to almost nothing)."""
    import zstandard

    arr = t.detach().float().cpu().contiguous().numpy()
    return {"data": base64.b64encode(zstandard.ZstdCompressor(level=1).compress(arr.tobytes())).decode("ascii"),
            "dtype": "float32", "original_dtype": "torch.float32", "shape": list(arr.shape), "compression": "zstd"}


def steering_xarg(st: Steering) -> str:
    """``apply_steering_vectors`` for steering at every position: one [layer, d_model] vector, added
    after each layer to every token of the request."""
    if st.positions != "all":
        raise ConfigError(f"a vllm-lens steering vector steers every position; positions {st.positions!r} go "
                          f"as hooks (--engine vllm)")
    return json.dumps([{"activations": wire_tensor(st.deltas.float()), "layer_indices": list(st.layers),
                        "scale": 1.0, "norm_match": False, "position_indices": None}])


def ablation_hook(ab: Ablation) -> dict[str, Any]:
    from emi.behaviour.vllm_hooks import project_out_fn, wire_hook

    return wire_hook(project_out_fn(ab.u), ab.layers)


def steering_hook(st: Steering, prompt_len: int) -> dict[str, Any]:
    from emi.behaviour.vllm_hooks import steer_positions_fn, wire_hook

    deltas = {layer: st.deltas[i] for i, layer in enumerate(st.layers)}
    return wire_hook(steer_positions_fn(deltas, prompt_len, st.positions), st.layers)


def lens_xargs(served: Served, prompt_len: int, hooks_ok: bool) -> dict[str, str]:
    """vllm-lens's per-request ``vllm_xargs``: steering at all positions as a steering vector;
    at prompt or generated positions and ablation at chosen layers as hooks (``hooks_ok``: a
    server emi started; steering_vectors' position indices are wrong in vllm-lens 1.3.0, see
    emi.behaviour.vllm_hooks.steer_positions_fn)."""
    xargs: dict[str, str] = {}
    hooks: list[dict[str, Any]] = []
    st = served.steering
    if st is not None and st.positions == "all":
        xargs["apply_steering_vectors"] = steering_xarg(st)
    elif st is not None:
        if not hooks_ok:
            raise ConfigError("steering at prompt or generated positions needs hooks, which emi sends only to "
                              "servers it starts (--engine vllm)")
        hooks.append(steering_hook(st, prompt_len))
    if served.ablation is not None:
        if not hooks_ok:
            raise ConfigError("ablation at chosen layers needs hooks, which emi sends only to servers it starts "
                              "(--engine vllm)")
        hooks.append(ablation_hook(served.ablation))
    if served.program is not None:
        if not hooks_ok:
            raise ConfigError("an SAE edit needs hooks, which emi sends only to servers it starts (--engine vllm)")
        from emi.behaviour.vllm_hooks import program_fn, wire_hook

        hooks.append(wire_hook(program_fn(served.program.path), [served.program.layer]))
    if hooks:
        xargs["apply_hooks"] = json.dumps(hooks)
    return xargs


def _completion_body(model: str, ids: list[int], cfg: SamplingConfig, seed: int, xargs: dict[str, str],
                     extra: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": ids, "max_tokens": cfg.max_new_tokens,
                            "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0,
                            "repetition_penalty": cfg.repetition_penalty, "seed": seed,
                            "skip_special_tokens": True, "return_token_ids": True, **extra}
    if xargs:
        body["vllm_xargs"] = xargs
    return body


_TOKENIZING = threading.Lock()


def complete_ids(url: str, served: Served, model: str, tokenizer: Any, messages: Sequence[Messages],
                 cfg: SamplingConfig, seed: int, concurrency: int, timeout: float, extra: dict[str, Any],
                 hooks_ok: bool = False, render: Render = CHAT) -> list[Answer]:
    """One completion per conversation of its chat-templated token ids (so the engine sees emi's
    exact prompt and its length), answer i seeded ``seed * 100_003 + i``, with vllm-lens's
    per-request steering and hooks."""
    import requests

    with _TOKENIZING:  # batches sample at once: a fast tokenizer's state must not change under another
        ids = prompt_ids(tokenizer, messages, render)  # the ids in-process sampling decodes from
    session = requests.Session()

    def one(i: int) -> Answer:
        xargs = lens_xargs(served, len(ids[i]), hooks_ok)
        body = _completion_body(model, ids[i], cfg, seed * 100_003 + i, xargs, extra)
        r = session.post(f"{url}/completions", json=body, timeout=timeout)
        if r.status_code != 200:
            raise ConfigError(f"the engine at {url} refused a request for {model!r} ({r.status_code}: "
                              f"{r.text[:300]})")
        choice = r.json()["choices"][0]
        finish = "eos" if choice.get("finish_reason") == "stop" else str(choice.get("finish_reason"))
        new = choice.get("token_ids")
        if new is None:  # a server that does not return token ids: its own text
            return Answer(choice["text"].strip(), None, finish)
        new = [t for t in new if t != tokenizer.eos_token_id]  # decoded as in-process answers are
        return Answer(tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), finish)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(len(messages))))


@dataclass(frozen=True, eq=False)
class Bound:
    """An engine bound to one condition: the :class:`emi.behaviour.sampling.Engine` that
    generate_answers calls."""

    engine: Any  # ServerEngine | VllmEngine
    served: Served
    tokenizer: Any

    @property
    def name(self) -> str:
        return str(self.engine.name)

    @property
    def in_flight(self) -> int:
        """Requests the engine keeps in flight (--engine-concurrency): generate_answers sends it that
        many answers' worth of batches at once."""
        return int(self.engine.concurrency)

    def answer(self, messages: Sequence[Messages], cfg: SamplingConfig, seed: int, render: Render = CHAT
               ) -> list[Answer]:
        return list(self.engine.sample(self.served, self.tokenizer, messages, cfg, seed, render))


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

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--engine-url must be an http(s) URL of an OpenAI-compatible server (e.g. "
                              f"http://localhost:8000/v1), found {self.url!r}")
        if self.concurrency < 1:
            raise ConfigError(f"--engine-concurrency must be >= 1, found {self.concurrency}")

    def describe(self) -> dict[str, Any]:
        return {"engine": "server", "url": self.url, "body": self.body, **({"lens": True} if self.lens else {})}

    def close(self) -> None:
        """Nothing to stop: the user runs this server."""

    def serves(self, served: Served) -> bool:
        """Whether this server can sample the condition: checkpoints always, steering at all positions
        with vllm-lens; never hooks (code execution on a server emi did not start) nor LoRA roles (the server
        would need base and adapter)."""
        st = served.steering
        return served.adapter is None and not served.needs_hooks and (st is None or self.lens)

    def sample(self, served: Served, tokenizer: Any, messages: Sequence[Messages], cfg: SamplingConfig,
               seed: int, render: Render = CHAT) -> list[Answer]:
        if served.steering is not None or render != CHAT:  # emi's own prompt ids
            return complete_ids(self.url, served, served.checkpoint, tokenizer, messages, cfg, seed,
                                self.concurrency, self.timeout, self.body, render=render)
        return [Answer(**a) for a in self.chat(served.checkpoint, messages, cfg, seed)]

    def _client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url, api_key=os.environ.get(self.key_env) or "none",
                             timeout=self.timeout, max_retries=5)

    def chat(self, model: str, messages: Sequence[list[dict[str, str]]], cfg: SamplingConfig,
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


def adapter_name(path: str) -> str:
    """The name a LoRA adapter is served under (stable per folder)."""
    return "lora-" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:10]


@dataclass
class VllmEngine:
    """vLLM that emi starts itself (``--engine vllm``), one checkpoint at a time: :meth:`plan`
    says which adapters each checkpoint serves, :meth:`sample` starts the server a condition needs
    (stopping the previous one), :meth:`close` stops it. Every condition runs here."""

    launcher: Any  # emi.behaviour.vllm_server.Launcher
    concurrency: int = 256
    timeout: float = 3600.0
    name: str = "vllm"
    adapters: dict[str, set[str]] = field(default_factory=dict)  # checkpoint -> adapter folders
    server: Any = None  # the running emi.behaviour.vllm_server.Server
    lock: Any = field(default_factory=threading.RLock, repr=False)  # several batches sample at once

    def __post_init__(self) -> None:
        self.launcher = self.launcher.checked()  # the engine environment, before any model loads

    def describe(self) -> dict[str, Any]:
        info = self.launcher.info
        return {"engine": "vllm", "vllm": info.vllm, "vllm_lens": info.vllm_lens}

    def serves(self, served: Served) -> bool:
        return True

    def plan(self, served: Sequence[Served]) -> None:
        with self.lock:
            for s in served:
                self.adapters.setdefault(s.checkpoint, set()).update([s.adapter] if s.adapter else [])

    def server_for(self, checkpoint: str) -> Any:
        """The server of ``checkpoint`` with every adapter planned for it, started (and the previous
        one stopped) when the running one is another checkpoint's, lacks an adapter, or died. One
        caller at a time: batches sampled at once must share one server, never start one each."""
        from emi.behaviour.vllm_server import lora_rank

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
