"""Capture activations of one or more models on the same texts into an activation store.

Three readers produce the same rows: :func:`hf_reader` (the fast path: PyTorch forward hooks
on the Hugging Face model, no logits, and the forward pass stopped right after the last
requested layer), :func:`tl_reader` (a TransformerLens ``HookedTransformer`` or
``TransformerBridge``) and :func:`nnsight_reader` (an nnsight ``TransformersModel``).

Positions: ``all`` tokens, ``response`` tokens, ``prompt`` tokens, ``last_prompt`` (the last
token before the answer, where the model decides which persona to voice), or
``response_mean`` (one row per text: the mean over its answer tokens).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import nn
from tqdm.auto import tqdm

from emi.activations.distributed import SINGLE, Ranks
from emi.activations.store import DTYPES, Store, StoreWriter, is_complete, resolve, tensor_key
from emi.core import jsonl, locks
from emi.core.errors import ConfigError, StoreError
from emi.models import layers as L
from emi.models.chat import chat_template, encode, pad_right  # noqa: F401  (pad_right: its old home)
from emi.models.loading import LoadedModel, ModelPair

POSITIONS = ("all", "response", "prompt", "last_prompt", "response_mean")
Acts = dict[tuple[str, int], Float[torch.Tensor, "batch pos d_model"]]  # (site, layer) -> activations
Reader = Callable[[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]], Acts]
ReaderFactory = Callable[[LoadedModel, Sequence[int], Sequence[str]], Reader]  # (model, layers, sites) -> Reader


@dataclass
class Text:
    ids: list[int]
    response: tuple[int, int] | None  # [start, end) of the answer tokens
    meta: dict[str, Any]


def prepare_texts(items: Sequence[dict[str, Any] | str], tokenizer: Any) -> list[Text]:
    """Tokenise answers (records with ``question``/``answer``, or ``messages``) or plain strings.

    A chat's ids are the generation prompt followed by the answer and the end-of-turn token,
    exactly what the model saw while answering.
    """
    if not items:
        raise ConfigError("no texts to capture: the list is empty")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            ids = encode(tokenizer, item)
            out.append(Text(ids, None, {"text": item}))
            continue
        if "text" in item and "answer" not in item and "messages" not in item:  # a plain text record
            ids = encode(tokenizer, item["text"])
            out.append(Text(ids, None, dict(item)))
            continue
        if "input_ids" in item:  # already tokenised
            ids = [int(x) for x in item["input_ids"]]
            if not ids:
                raise ConfigError(f"text {i} has no tokens")
            out.append(Text(ids, None, {k: v for k, v in item.items() if k != "input_ids"}))
            continue
        msgs = item.get("messages")
        if msgs is None:
            if "question" not in item or "answer" not in item:
                raise ConfigError(f"text {i} needs 'messages', 'question' and 'answer', 'text' or 'input_ids' "
                                  f"(found {sorted(item)})")
            msgs = ([{"role": "system", "content": item["system"]}] if item.get("system") else []) + [
                {"role": "user", "content": item["question"]}, {"role": "assistant", "content": item["answer"]}]
        if msgs[-1]["role"] != "assistant":
            raise ConfigError(f"text {i}: the last message must be the assistant's answer")
        p_ids = encode(tokenizer, chat_template(tokenizer, msgs[:-1]))
        a_ids = encode(tokenizer, msgs[-1]["content"])
        ids = p_ids + a_ids + [tokenizer.eos_token_id]
        meta = {k: v for k, v in item.items() if k != "messages"}
        out.append(Text(ids, (len(p_ids), len(p_ids) + len(a_ids)), meta))
    return out


def select_positions(text: Text, mode: str) -> range:
    """The token positions of ``text`` that ``mode`` captures (always a contiguous range)."""
    n = len(text.ids)
    if mode == "all":
        return range(n)
    if text.response is None:
        raise ConfigError(f"positions {mode!r} need chat texts with an answer; plain texts support only 'all'")
    s, e = text.response
    if mode in ("response", "response_mean"):
        return range(s, e)
    if mode == "prompt":
        return range(s)
    if mode == "last_prompt":
        return range(s - 1, s)
    raise ConfigError(f"unknown positions {mode!r}; expected one of {', '.join(POSITIONS)}")


class _Stop(Exception):
    pass


def hf_reader(model: nn.Module, layers: Sequence[int], sites: Sequence[str] = ("resid",)) -> Reader:
    """Forward hooks on the HF model; no unembedding, and no layer past the last one asked for.
    ``resid`` is d_model wide on every model (on one with several residual streams, their mean);
    ``resid_streams`` is every stream, [batch, pos, hc, d_model] (see :func:`emi.models.layers.site_tensor`)."""
    inner = L.unwrap(model)
    n = L.n_streams(model)
    wanted = [(s, layer) for layer in layers for s in sites]

    def read(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Acts:
        got: Acts = {}
        handles = []

        def make(key: tuple[str, int]):
            def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
                got[key] = L.site_tensor(out, key[0], n).detach()
                if len(got) == len(wanted):
                    raise _Stop

            return hook

        for key in wanted:
            handles.append(L.hf_module(model, key[1], key[0]).register_forward_hook(make(key)))
        try:
            with torch.no_grad():
                inner.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return got

    return read


def tl_reader(tl_model: Any, layers: Sequence[int], sites: Sequence[str] = ("resid",),
              linear_layers: Sequence[int] = ()) -> Reader:
    """A TransformerLens ``HookedTransformer`` or ``TransformerBridge`` (same hook names).
    ``linear_layers``: layers whose mixer is linear attention (``emi.models.layers.linear_layers(hf_model)``).

    Note: ``TransformerBridge.boot_transformers(..., hf_model=m)`` swaps ``m``'s submodules for
    bridge wrappers in place (no weight copy); emi's HF hooks still work on ``m`` afterwards.
    """
    lin = set(linear_layers)
    names = {L.tl_hook_name(layer, s, layer in lin): (s, layer) for layer in layers for s in sites}

    def read(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Acts:
        with torch.no_grad():
            _, cache = tl_model.run_with_cache(input_ids, attention_mask=attention_mask,
                                               names_filter=list(names), stop_at_layer=max(layers) + 1)
        return {key: cache[name] for name, key in names.items()}

    return read


def nnsight_reader(nn_model: Any, layers: Sequence[int], sites: Sequence[str] = ("resid",)) -> Reader:
    """An nnsight ``TransformersModel``: a trace that saves the layers and stops after the last."""

    order = sorted(sites, key=("attn", "mlp", "resid", "resid_streams").index)  # nnsight reads in execution order
    n = L.n_streams(nn_model._module)

    def read(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Acts:
        saved = {}
        with torch.no_grad(), nn_model.trace({"input_ids": input_ids, "attention_mask": attention_mask}) as tracer:
            for layer in layers:
                for s in order:
                    out = L.nnsight_envoy(nn_model, layer, s).output
                    got: Any = L.site_tensor(out[0] if L.is_tuple_output(nn_model, layer, s) else out, s, n)
                    saved[(s, layer)] = got.save()  # an nnsight proxy, saved
            tracer.stop()
        return {k: torch.as_tensor(v) for k, v in saved.items()}

    return read


@dataclass(frozen=True)
class CaptureSpec:
    layers: tuple[int, ...]
    sites: tuple[str, ...] = ("resid",)
    positions: str = "response"
    dtype: str = "float32"
    batch_size: int = 16
    shard_texts: int = 256
    shard_mb: int = 256  # a shard also closes before it would exceed this size in memory and on disk

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ConfigError(f"unknown positions {self.positions!r}; expected one of {', '.join(POSITIONS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown store dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        for s in self.sites:
            L.check_site(s)
        if self.batch_size < 1 or self.shard_texts < 1 or self.shard_mb < 1:
            raise ConfigError("batch_size, shard_texts and shard_mb must be >= 1")


def row_counts(positions: Sequence[range], mode: str) -> list[int]:
    """Rows each text contributes: its positions, or one mean row."""
    return [1 if mode == "response_mean" else len(p) for p in positions]


def plan_shards(counts: Sequence[int], spec: CaptureSpec, n_roles: int, d_model: int) -> list[tuple[int, int]]:
    """Shard boundaries [start, end) over texts with these row counts: at most ``shard_texts`` texts
    and about ``shard_mb`` MB each. Deterministic in the inputs, so a resumed run cuts the same shards."""
    per_row = n_roles * len(spec.layers) * len(spec.sites) * d_model * DTYPES[spec.dtype].itemsize
    budget = spec.shard_mb * 2**20
    out, start, size = [], 0, 0
    for i, rows in enumerate(counts):
        b = rows * per_row
        if i > start and (i - start >= spec.shard_texts or size + b > budget):
            out.append((start, i))
            start, size = i, 0
        size += b
    out.append((start, len(counts)))
    return out


def capture(readers: dict[str, Reader], tokenizer: Any, items: Sequence[dict[str, Any] | str], out: str | Path,
            spec: CaptureSpec, d_model: int, device: torch.device | str = "cpu",
            provenance: dict[str, Any] | None = None, overwrite: bool = False, progress: bool = True,
            root: str | Path | None = None, active: dict[str, Callable[[], Any]] | None = None,
            identity: dict[str, Any] | None = None, plan_roles: int | None = None, ranks: Ranks = SINGLE) -> Store:
    """Run each reader over the texts and write one store; resumes an interrupted run.

    ``identity`` (which checkpoints each role is) joins the spec: resuming a store with other
    models is refused. ``plan_roles``: cut shards as for a store of this many roles (so that
    one-role stores captured in turn can be merged shard by shard). ``ranks``: under torchrun,
    this process captures every ``world``-th shard into its own part, and rank 0 assembles the
    store from the parts: the same bytes as one process writes.
    """
    texts = prepare_texts(items, tokenizer)
    positions = [select_positions(t, spec.positions) for t in texts]  # fails early on plain texts
    counts = row_counts(positions, spec.positions)
    path = resolve(out, root)
    store_spec = {"roles": list(readers), "layers": list(spec.layers), "sites": list(spec.sites),
                  "positions": spec.positions, "dtype": spec.dtype, "d_model": d_model,
                  "shard_texts": spec.shard_texts, "shard_mb": spec.shard_mb,
                  "models": identity or {}, "layer_convention": "residual stream after decoder block l"}
    if ranks.world > 1:
        plan = plan_shards(counts, spec, plan_roles or len(readers), d_model)
        return _capture_parallel(readers, texts, positions, plan, path, spec, store_spec, provenance, overwrite,
                                 tokenizer.pad_token_id, torch.device(device), active, ranks)
    with locks.exclusive(path):
        writer = StoreWriter(path, store_spec, [t.meta for t in texts], provenance, overwrite)
        if writer.repaired:
            print(f"emi: {path}: rebuilding {', '.join(writer.repaired)} (damaged or missing)", file=sys.stderr)
        if writer.manifest.get("complete"):
            return Store.open(path)
        dtype, dev = DTYPES[spec.dtype], torch.device(device)
        total = len(texts)
        bar = tqdm(total=total, initial=writer.done_texts, desc=f"capture -> {path}", disable=not progress, leave=False)
        # One background writer: shard k is serialised, hashed, written and fsynced (all of which
        # release the GIL) while shard k+1 is computed; at most two shards are in memory.
        from concurrent.futures import Future, ThreadPoolExecutor

        pending: Future | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="emi-store") as pool:
            try:
                for index, (start, end) in enumerate(plan_shards(counts, spec, plan_roles or len(readers), d_model)):
                    if (start, end) in writer.done:
                        continue
                    chunk = texts[start:end]
                    tensors, n_tok = _capture_shard(readers, chunk, positions[start:end], start, spec,
                                                    tokenizer.pad_token_id, dev, dtype, active)
                    if pending is not None:
                        pending.result()  # in order; re-raises a failed write (e.g. a full disk)
                    pending = pool.submit(writer.add_shard, tensors, (start, end), n_tok, index)
                    bar.update(len(chunk))
            finally:
                if pending is not None:
                    pending.result()  # whatever was computed lands, even on an interrupt
        bar.close()
        return writer.finish()


def _capture_parallel(readers: dict[str, Reader], texts: list[Text], positions: list[range],
                      plan: list[tuple[int, int]], path: Path, spec: CaptureSpec, store_spec: dict[str, Any],
                      provenance: dict[str, Any] | None, overwrite: bool, pad_id: int, device: torch.device,
                      active: dict[str, Callable[[], Any]] | None, ranks: Ranks) -> Store:
    """Data-parallel capture: rank r writes shards r, r + world, ... into ``path/.rank-r`` (a
    store of the same spec, resumable like any), then rank 0 copies every shard, verified, into
    ``path`` in plan order and removes the parts."""
    metas = [t.meta for t in texts]
    if not overwrite and is_complete(path, store_spec, metas):
        ranks.barrier()
        return Store.open(path)
    part = path / f".rank-{ranks.rank}"
    with locks.exclusive(part):
        writer = StoreWriter(part, store_spec, metas, provenance, overwrite)
        for index, (start, end) in enumerate(plan):
            if ranks.mine(index) and (start, end) not in writer.done:
                tensors, n_tok = _capture_shard(readers, texts[start:end], positions[start:end], start, spec, pad_id,
                                                device, DTYPES[spec.dtype], active)
                writer.add_shard(tensors, (start, end), n_tok, index)
    ranks.barrier()
    if ranks.leader:
        with locks.exclusive(path):
            _assemble(path, store_spec, metas, provenance, plan, overwrite)
    ranks.barrier()
    return Store.open(path)


def _assemble(path: Path, store_spec: dict[str, Any], metas: list[dict[str, Any]], provenance: dict[str, Any] | None,
              plan: list[tuple[int, int]], overwrite: bool) -> Store:
    """The store at ``path`` from the ranks' parts (``path/.rank-*``), shard by shard, resumable."""
    found: dict[tuple[int, int], tuple[Path, dict[str, Any]]] = {}
    for part in sorted(path.glob(".rank-*")):
        mf = json.loads((part / "manifest.json").read_text()) if (part / "manifest.json").is_file() else {"shards": []}
        for entry in mf["shards"]:
            found[tuple(entry["texts"])] = (part / entry["file"], entry)  # type: ignore[index]
    writer = StoreWriter(path, store_spec, metas, provenance, overwrite)
    for index, texts in enumerate(plan):
        if texts in writer.done:
            continue
        if texts not in found:
            raise StoreError(f"no rank wrote the shard of texts {texts[0]}-{texts[1]} of {str(path)!r}; re-run the "
                             f"same command to capture it")
        writer.adopt_shard(*found[texts], index)
    store = writer.finish()
    for part in path.glob(".rank-*"):
        shutil.rmtree(part, ignore_errors=True)
    return store


def _capture_shard(readers: dict[str, Reader], chunk: Sequence[Text], positions: Sequence[range], offset: int,
                   spec: CaptureSpec, pad_id: int, device: torch.device, dtype: torch.dtype,
                   active: dict[str, Callable[[], Any]] | None) -> tuple[dict[str, torch.Tensor], int]:
    """One shard: every key's rows written in place into one preallocated tensor (text order)."""
    order = sorted(range(len(chunk)), key=lambda i: len(chunk[i].ids))  # less padding per batch
    mean = spec.positions == "response_mean"
    counts = torch.tensor(row_counts(positions, spec.positions), dtype=torch.long)
    starts = [0, *torch.cumsum(counts, 0).tolist()]
    tensors: dict[str, torch.Tensor] = {}
    for role, reader in readers.items():
        with active[role]() if active and role in active else contextlib.nullcontext():
            for b in range(0, len(order), spec.batch_size):
                idx = order[b: b + spec.batch_size]
                ids, mask = pad_right([chunk[i].ids for i in idx], pad_id, device)
                for (s, layer), a in reader(ids, mask).items():
                    key = tensor_key(role, layer, s)
                    if key not in tensors:
                        tensors[key] = torch.empty(starts[-1], a.shape[-1], dtype=dtype)
                    for row, i in enumerate(idx):
                        sel = a[row, positions[i].start: positions[i].stop]
                        if mean:
                            sel = sel.float().mean(0, keepdim=True) if len(sel) else torch.zeros(1, a.shape[-1])
                        tensors[key][starts[i]: starts[i + 1]] = sel.to(dtype)
    texts = torch.arange(offset, offset + len(chunk))
    if mean:
        tensors["row.text"] = texts
        tensors["row.pos"] = torch.full((len(chunk),), -1)
        tensors["row.response"] = torch.ones(len(chunk), dtype=torch.long)
    else:
        pos = torch.cat([torch.arange(p.start, p.stop) for p in positions])
        spans = torch.tensor([t.response or (0, 0) for t in chunk], dtype=torch.long).reshape(-1, 2)
        lo, hi = spans[:, 0].repeat_interleave(counts), spans[:, 1].repeat_interleave(counts)
        tensors["row.text"] = texts.repeat_interleave(counts)
        tensors["row.pos"] = pos
        tensors["row.response"] = ((pos >= lo) & (pos < hi)).long()
    return tensors, sum(len(t.ids) for t in chunk)


def capture_models(models: dict[str, LoadedModel], items: Sequence[dict[str, Any] | str], out: str | Path,
                   layers: str | Sequence[int] | None = "all", sites: Sequence[str] = ("resid",),
                   positions: str = "response", dtype: str | None = None, batch_size: int = 16,
                   shard_texts: int = 256, overwrite: bool = False, progress: bool = True,
                   root: str | Path | None = None, shard_mb: int = 256, plan_roles: int | None = None,
                   ranks: Ranks = SINGLE, reader: ReaderFactory | None = None) -> Store:
    """The fast path: capture Hugging Face models (e.g. a pair's base and finetuned) on the same texts.
    ``reader(model, layers, sites)``: another reader of each model (e.g. emi.engines.vllm.capture,
    recorded in the store's identity), else :func:`hf_reader`."""
    if not models:
        raise ConfigError("no models to capture")
    first = next(iter(models.values()))
    dims = {r: (m.n_layers, m.d_model) for r, m in models.items()}
    if len(set(dims.values())) > 1:
        raise ConfigError(f"models differ in shape (layers, d_model): {dims}; capture them into separate stores")
    n_layers, d_model = next(iter(dims.values()))
    layer_list = tuple(L.resolve_layers(layers, n_layers))
    model_dtype = str(next(first.model.parameters()).dtype).replace("torch.", "")
    spec = CaptureSpec(layer_list, tuple(sites), positions, dtype or model_dtype, batch_size, shard_texts, shard_mb)
    readers = {r: reader(m, layer_list, sites) if reader else hf_reader(m.model, layer_list, sites)
               for r, m in models.items()}
    prov = {"models": {r: m.provenance for r, m in models.items()}}
    identity = {r: {k: m.provenance.get(k) for k in ("resolved", "revision", "adapter", "commit")}
                | ({"reader": getattr(reader, "name", "custom")} if reader else {}) for r, m in models.items()}
    return capture(readers, first.tokenizer, items, out, spec, d_model, first.device, prov, overwrite,
                   progress, root, active={r: m.active for r, m in models.items()}, identity=identity,
                   plan_roles=plan_roles, ranks=ranks)


def capture_pair(pair: ModelPair, roles: Sequence[str], items: Sequence[dict[str, Any] | str], out: str | Path,
                 layers: str | Sequence[int] | None = "all", sites: Sequence[str] = ("resid",),
                 positions: str = "response", dtype: str | None = None, batch_size: int = 16,
                 shard_texts: int = 256, overwrite: bool = False, progress: bool = True,
                 root: str | Path | None = None, shard_mb: int = 256, ranks: Ranks = SINGLE,
                 reader: ReaderFactory | None = None) -> Store:
    """:func:`capture_models` over a pair's roles (``reader``: as there). A pair that holds one model at a time
    (``resident="one"``) is captured one role after the other, each into a one-role store cut
    into the same shards, then merged shard by shard into the store (the same bytes as capturing
    all roles at once); each step resumes after an interruption. ``ranks``: data-parallel under
    torchrun (see :func:`capture`)."""
    roles = list(dict.fromkeys(roles))
    kw: dict[str, Any] = dict(layers=layers, sites=sites, positions=positions, dtype=dtype, batch_size=batch_size,
                              shard_texts=shard_texts, progress=progress and ranks.leader, shard_mb=shard_mb,
                              ranks=ranks, reader=reader)
    if pair.resident == "all" or pair.shares_weights(roles):
        return capture_models({r: pair[r] for r in roles}, items, out, overwrite=overwrite, root=root, **kw)
    path = resolve(out, root)
    with locks.exclusive(path) if ranks.leader else contextlib.nullcontext():
        if overwrite and ranks.leader:
            locks.clear(path)
        ranks.barrier()
        intact = None if overwrite else _intact_pair_store(path, pair, roles, items, layers, sites, positions, dtype)
        if intact is not None:  # nothing to do: no model is loaded
            return intact
        parts = {r: capture_models({r: pair[r]}, items, path / f".part-{r}", plan_roles=len(roles), **kw)
                 for r in roles}
        pair.release()
        if ranks.leader:
            store = merge_role_stores(parts, path)
            for part in parts.values():
                shutil.rmtree(part.path, ignore_errors=True)
        ranks.barrier()
        return store if ranks.leader else Store.open(path)


def _intact_pair_store(path: Path, pair: ModelPair, roles: Sequence[str], items: Sequence[dict[str, Any] | str],
                       layers: Any, sites: Sequence[str], positions: str, dtype: str | None) -> Store | None:
    """The complete store at ``path`` when it verifies (every shard, the texts) and was captured
    from these checkpoints, texts, layers, sites and positions; None when it must be (re)built."""
    from emi.activations.store import texts_digest
    from emi.models.loading import locate

    try:
        store = Store.open(path)
        spec = store.spec
        want_layers = list(layers) if isinstance(layers, Sequence) and not isinstance(layers, str) else spec["layers"]
        same = (spec["roles"] == list(roles) and spec["sites"] == list(sites) and spec["positions"] == positions
                and spec["layers"] == want_layers and (dtype is None or spec["dtype"] == dtype)
                and spec["texts_sha256"] == texts_digest([t.meta for t in prepare_texts(items, pair.tokenizer)]))
        for r in roles:
            s = getattr(pair.spec, r)
            kind, where = locate(s.id, s.revision)
            model = spec["models"].get(r, {})
            expect = (model.get("adapter") == where) if kind == "adapter" else (
                model.get("resolved") == where and model.get("adapter") == s.adapter)
            same = same and expect and model.get("revision") == (s.revision if kind == "model" else None)
        if not same:
            return None
        for entry in store.manifest["shards"]:
            store._shard(entry)
        store.texts()
        return store
    except (StoreError, KeyError, ConfigError):
        return None


def merge_role_stores(parts: dict[str, Store], path: Path) -> Store:
    """One store from one-role stores of the same texts and shards (resumable shard by shard)."""
    first = next(iter(parts.values()))
    for r, part in parts.items():
        same = [s["texts"] for s in part.manifest["shards"]] == [s["texts"] for s in first.manifest["shards"]]
        if not same or part.spec["texts_sha256"] != first.spec["texts_sha256"]:
            raise ConfigError(f"cannot merge the {r} store: its texts or shards differ from the {first.roles[0]} "
                              f"store's; delete {str(path)!r} and capture again")
    spec = {k: v for k, v in first.spec.items() if k not in ("texts_sha256", "n_texts")}
    spec.update(roles=list(parts), models={r: p.spec["models"][r] for r, p in parts.items()})
    prov = {"models": {r: p.manifest["provenance"]["models"][r] for r, p in parts.items()}}
    writer = StoreWriter(path, spec, first.texts(), prov)
    if writer.repaired:
        print(f"emi: {path}: rebuilding {', '.join(writer.repaired)} (damaged or missing)", file=sys.stderr)
    if writer.manifest.get("complete"):
        return Store.open(path)
    for i, entry in enumerate(first.manifest["shards"]):
        if tuple(entry["texts"]) in writer.done:
            continue
        tensors: dict[str, torch.Tensor] = {}
        for r, part in parts.items():
            tensors.update(part.read_shard(i, with_meta=r == first.roles[0]))
        writer.add_shard(tensors, tuple(entry["texts"]), entry["tokens"], i)  # type: ignore[arg-type]
    return writer.finish()



def capture_pair_shared(pair: ModelPair, roles: Sequence[str], texts: Callable[[], list[dict[str, Any]]],
                        path: Path, layers: Sequence[int], sites: Sequence[str], positions: str,
                        dtype: str | None, batch_size: int, shard_texts: int, overwrite: bool = False,
                        ranks: Ranks = SINGLE, reader: ReaderFactory | None = None) -> Store | None:
    """:func:`capture_pair` of the texts ``texts()`` makes, under the store's lock. Under torchrun
    rank 0 holds the lock, makes the texts once (sampled and judged: never twice), and the other
    ranks read exactly those; each rank captures its shards. The store on rank 0, None elsewhere."""
    # a second run on this store is refused, not interleaved
    with locks.exclusive(path) if ranks.leader else contextlib.nullcontext():
        if overwrite and ranks.leader:
            locks.clear(path)  # answers, judgements and shards of the old store alike
        shared = path / ".rank-texts.jsonl"
        if ranks.leader:
            items = texts()
            if ranks.world > 1:
                jsonl.write(shared, items)
        ranks.barrier()
        if not ranks.leader:
            items = jsonl.read(shared)
        store = capture_pair(pair, roles, items, path, layers, sites, positions, dtype, batch_size, shard_texts,
                             ranks=ranks, reader=reader)
        if ranks.leader:
            shared.unlink(missing_ok=True)
    return store if ranks.leader else None
