"""vllm-lens's wire format: its JSON tensors, a steering vector at every position
(``apply_steering_vectors``), hooks (``apply_hooks``: functions cloudpickled into the server, i.e.
code execution there, sent only to servers emi starts; emi.engines.vllm.hooks), and completions of
token ids with those per-request ``vllm_xargs``. Prompts go as token ids of emi's chat template (so
the engine sees emi's exact prompt, and emi knows its length) and answers come back as token ids
that emi decodes as it decodes its own. Used by vLLM that emi starts and by a server with vllm-lens
(``--engine server --engine-lens``)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from emi.behaviour.sampling import Answer, Messages, SamplingConfig
from emi.core.errors import ConfigError
from emi.engines.served import Ablation, Served, Steering
from emi.models.chat import CHAT, Render, prompt_ids

if TYPE_CHECKING:
    from emi.engines.vllm.hooks import WireHook, WireTensor


def wire_tensor(t: torch.Tensor) -> WireTensor:
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


def ablation_hook(ab: Ablation) -> WireHook:
    from emi.engines.vllm.hooks import project_out_fn, wire_hook

    return wire_hook(project_out_fn(ab.u), ab.layers)


def steering_hook(st: Steering, prompt_len: int) -> WireHook:
    from emi.engines.vllm.hooks import steer_positions_fn, wire_hook

    deltas = {layer: st.deltas[i] for i, layer in enumerate(st.layers)}
    return wire_hook(steer_positions_fn(deltas, prompt_len, st.positions), st.layers)


def lens_xargs(served: Served, prompt_len: int, hooks_ok: bool) -> dict[str, str]:
    """vllm-lens's per-request ``vllm_xargs``: steering at all positions as a steering vector;
    at prompt or generated positions and ablation at chosen layers as hooks (``hooks_ok``: a
    server emi started; steering_vectors' position indices are wrong in vllm-lens 1.3.0, see
    emi.engines.vllm.hooks.steer_positions_fn)."""
    xargs: dict[str, str] = {}
    hooks: list[WireHook] = []
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
        from emi.engines.vllm.hooks import program_fn, wire_hook

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
