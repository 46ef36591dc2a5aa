"""Capture through vLLM (``emi.cache --engine vllm``): vllm-lens's ``output_residual_stream``
returns the residual stream after each requested decoder block for every prompt token; emi sends
each text's token ids as the prompt (one new token, greedy) and writes the rows into the same
store as the Hugging Face reader (same layers, positions, manifest). Only the residual stream:
vllm-lens captures no attention or MLP outputs."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from jaxtyping import Int

from emi.activations.readers import Acts, Reader
from emi.core.errors import ConfigError
from emi.engines.served import Served, plain
from emi.engines.vllm.launcher import Server, adapter_name
from emi.models.loading import LoadedModel

if TYPE_CHECKING:
    from emi.engines.vllm.hooks import WireTensor


class Host(Protocol):
    """What capture needs of the vLLM engine (emi.engines.vllm.engine.VllmEngine): the server of a
    checkpoint with its planned adapters, and its request settings."""

    @property
    def concurrency(self) -> int: ...

    @property
    def timeout(self) -> float: ...

    def plan(self, served: Sequence[Served]) -> None: ...

    def server_for(self, checkpoint: str) -> Server: ...


def decode_tensor(wire: WireTensor) -> torch.Tensor:
    """vllm-lens's base64 (optionally zstd) tensor form back to a tensor."""
    raw = base64.b64decode(wire["data"])
    if wire.get("compression") == "zstd":
        import zstandard

        raw = zstandard.ZstdDecompressor().decompress(raw)
    t = torch.from_numpy(np.frombuffer(raw, dtype=np.dtype(wire["dtype"])).reshape(wire["shape"]).copy())
    if wire.get("original_dtype") == "torch.bfloat16":
        t = t.view(torch.bfloat16)
    return t


def vllm_reader(engine: Host, lm: LoadedModel, layers: Sequence[int], sites: Sequence[str] = ("resid",)) -> Reader:
    """A capture reader that runs ``lm``'s checkpoint (and LoRA adapter) on the vLLM server ``engine``
    starts for it."""
    import requests

    if tuple(sites) != ("resid",):
        raise ConfigError(f"vLLM captures the residual stream only (vllm-lens has no attention or MLP outputs), "
                          f"asked for sites {list(sites)}; use --sites resid, or --engine in-process")
    served = plain(lm)
    engine.plan([served])
    model = adapter_name(served.adapter) if served.adapter else served.checkpoint
    wanted = sorted(layers)

    def one(url: str, ids: list[int]) -> torch.Tensor:
        body: dict[str, Any] = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
                                "vllm_xargs": {"output_residual_stream": json.dumps(wanted)}}
        r = requests.post(f"{url}/v1/completions", json=body, timeout=engine.timeout)
        if r.status_code != 200:
            raise ConfigError(f"the vLLM server refused a capture request ({r.status_code}: {r.text[:300]})")
        acts = (r.json().get("activations") or {}).get("residual_stream")
        if acts is None:
            raise ConfigError("the vLLM server returned no activations: is vllm-lens installed in the engine "
                              "environment? (`make vllm`)")
        return decode_tensor(acts)[:, : len(ids)]  # [layer, pos, d_model]; a surplus decode step dropped

    def read(input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"]) -> Acts:
        server = engine.server_for(served.checkpoint)
        rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids.cpu(), attention_mask.cpu(), strict=True)]
        try:
            with ThreadPoolExecutor(max_workers=engine.concurrency) as pool:
                got = list(pool.map(lambda ids: one(server.url, ids), rows))
        except requests.RequestException:
            if not server.alive():
                raise server.died() from None
            raise
        b, p = input_ids.shape
        out: Acts = {}
        for li, layer in enumerate(wanted):
            t = torch.zeros(b, p, got[0].shape[-1], dtype=got[0].dtype)
            for i, g in enumerate(got):  # right-padded rows (emi.models.chat.pad_right)
                t[i, : g.shape[1]] = g[li]
            out[("resid", layer)] = t.to(input_ids.device)
        return out

    return read


class VllmReaders:
    """The reader factory ``emi.activations.capture.capture_models(reader=...)`` takes: each model on
    vLLM; recorded as ``reader: vllm`` in the store's identity."""

    name = "vllm"

    def __init__(self, engine: Host) -> None:
        self.engine = engine

    def __call__(self, lm: LoadedModel, layers: Sequence[int], sites: Sequence[str]) -> Reader:
        return vllm_reader(self.engine, lm, layers, sites)
