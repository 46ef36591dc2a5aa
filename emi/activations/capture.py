"""Capture activations of one or more models on the same texts into an activation store.

A capture runs the readers (:mod:`emi.activations.readers`) over the texts of a plan
(:mod:`emi.activations.plan`: tokens, positions, :class:`CaptureSpec`, shards) and writes one store,
shard by shard, resumable: in one process, or data-parallel under torchrun (each rank its shards,
rank 0 assembles them). A pair that holds one model at a time is captured role by role and merged
(:mod:`emi.activations.pair_store`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emi.activations.distributed import SINGLE, Ranks
from emi.activations.pair_store import intact_pair_store, merge_role_stores
from emi.activations.plan import (
    CaptureSpec,
    Item,
    Text,
    plan_shards,
    prepare_texts,
    row_counts,
    select_positions,
    thought_spec,
)
from emi.activations.readers import Reader, ReaderFactory, hf_reader
from emi.activations.store import (
    DTYPES,
    Manifest,
    ModelIdentity,
    ShardEntry,
    Store,
    StoreProvenance,
    StoreSpec,
    StoreWriter,
    Texts,
    is_complete,
    resolve,
    tensor_key,
)
from emi.core import jsonl, locks
from emi.core.errors import ConfigError, StoreError
from emi.models.chat import pad_right
from emi.models.loading import LoadedModel, ModelPair

__all__ = ["capture", "capture_models", "capture_pair", "capture_pair_shared"]


def capture(readers: dict[str, Reader], tokenizer: Any, items: Sequence[Item], out: str | Path,
            spec: CaptureSpec, d_model: int, device: torch.device | str = "cpu",
            provenance: StoreProvenance | None = None, overwrite: bool = False, progress: bool = True,
            root: str | Path | None = None, active: dict[str, Callable[[], Any]] | None = None,
            identity: dict[str, ModelIdentity] | None = None, plan_roles: int | None = None, ranks: Ranks = SINGLE) -> Store:
    """Run each reader over the texts and write one store; resumes an interrupted run.

    ``identity`` (which checkpoints each role is) joins the spec: resuming a store with other
    models is refused. ``plan_roles``: cut shards as for a store of this many roles (so that
    one-role stores captured in turn can be merged shard by shard). ``ranks``: under torchrun,
    this process captures every ``world``-th shard into its own part, and rank 0 assembles the
    store from the parts: the same bytes as one process writes.
    """
    texts = prepare_texts(items, tokenizer)
    positions = [select_positions(t, spec.positions) for t in texts]  # fails early on plain texts
    thoughts = thought_spec(texts)
    if spec.positions == "thought" and not thoughts:
        raise ConfigError(f"positions 'thought' capture the thoughts of answers sampled with thinking on, and none "
                          f"of these {len(texts)} texts has one (an answer's record keeps it in 'thought'); sample "
                          f"them with --thinking on, on a model that thinks")
    counts = row_counts(positions, spec.positions)
    path = resolve(out, root)
    store_spec = StoreSpec(roles=list(readers), layers=list(spec.layer_indices), sites=list(spec.sites),
                           positions=spec.positions, dtype=spec.store_dtype, d_model=d_model,
                           shard_texts=spec.shard_texts, shard_mb=spec.shard_mb, models=identity or {},
                           layer_convention="residual stream after decoder block l")
    store_spec.update(thoughts)
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
        dtype, dev = DTYPES[spec.store_dtype], torch.device(device)
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
                      plan: list[tuple[int, int]], path: Path, spec: CaptureSpec, store_spec: StoreSpec,
                      provenance: StoreProvenance | None, overwrite: bool, pad_id: int, device: torch.device,
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
                                                device, DTYPES[spec.store_dtype], active)
                writer.add_shard(tensors, (start, end), n_tok, index)
    ranks.barrier()
    if ranks.leader:
        with locks.exclusive(path):
            _assemble(path, store_spec, metas, provenance, plan, overwrite)
    ranks.barrier()
    return Store.open(path)


def _assemble(path: Path, store_spec: StoreSpec, metas: Texts, provenance: StoreProvenance | None,
              plan: list[tuple[int, int]], overwrite: bool) -> Store:
    """The store at ``path`` from the ranks' parts (``path/.rank-*``), shard by shard, resumable."""
    found: dict[tuple[int, int], tuple[Path, ShardEntry]] = {}
    for part in sorted(path.glob(".rank-*")):
        mf: Manifest = (json.loads((part / "manifest.json").read_text()) if (part / "manifest.json").is_file()
                        else Manifest(shards=[]))
        for entry in mf["shards"]:
            found[(entry["texts"][0], entry["texts"][1])] = (part / entry["file"], entry)
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

        def within(spans: list[tuple[int, int]]) -> torch.Tensor:
            se = torch.tensor(spans, dtype=torch.long).reshape(-1, 2)
            return (pos >= se[:, 0].repeat_interleave(counts)) & (pos < se[:, 1].repeat_interleave(counts))

        tensors["row.text"] = texts.repeat_interleave(counts)
        tensors["row.pos"] = pos
        # 1: an answer token; 2: a token of the thought before it; 0: the prompt's
        tensors["row.response"] = (within([t.response or (0, 0) for t in chunk]).long()
                                   + 2 * within([t.thought or (0, 0) for t in chunk]).long())
    return tensors, sum(len(t.ids) for t in chunk)


def capture_models(models: dict[str, LoadedModel], items: Sequence[Item], out: str | Path,
                   spec: CaptureSpec | None = None, *, overwrite: bool = False,
                   progress: bool = True, root: str | Path | None = None, plan_roles: int | None = None,
                   ranks: Ranks = SINGLE, reader: ReaderFactory | None = None) -> Store:
    """The fast path: capture Hugging Face models (e.g. a pair's base and finetuned) on the same texts,
    as ``spec`` asks (default: every layer's residual over the answer tokens, in the model's dtype).
    ``reader(model, layers, sites)``: another reader of each model (e.g. emi.engines.vllm.capture,
    recorded in the store's identity), else :func:`hf_reader`."""
    want = spec or CaptureSpec()
    if not models:
        raise ConfigError("no models to capture")
    first = next(iter(models.values()))
    dims = {r: (m.n_layers, m.d_model) for r, m in models.items()}
    if len(set(dims.values())) > 1:
        raise ConfigError(f"models differ in shape (layers, d_model): {dims}; capture them into separate stores")
    n_layers, d_model = next(iter(dims.values()))
    model_dtype = str(next(first.model.parameters()).dtype).replace("torch.", "")
    got = want.resolved(n_layers, model_dtype)
    layers = got.layer_indices
    readers = {r: reader(m, layers, got.sites) if reader else hf_reader(m.model, layers, got.sites)
               for r, m in models.items()}
    prov = StoreProvenance(models={r: m.provenance for r, m in models.items()})
    identity = {r: _identity(m, reader) for r, m in models.items()}
    return capture(readers, first.tokenizer, items, out, got, d_model, first.device, prov, overwrite,
                   progress, root, active={r: m.active for r, m in models.items()}, identity=identity,
                   plan_roles=plan_roles, ranks=ranks)


def _identity(m: LoadedModel, reader: ReaderFactory | None) -> ModelIdentity:
    """The checkpoint a role's rows come from, as the store's spec records it."""
    p = m.provenance
    out = ModelIdentity(resolved=p.get("resolved"), revision=p.get("revision"), adapter=p.get("adapter"),
                        commit=p.get("commit"))
    if reader:
        out["reader"] = getattr(reader, "name", "custom")
    return out


def capture_pair(pair: ModelPair, roles: Sequence[str], items: Sequence[Item], out: str | Path,
                 spec: CaptureSpec | None = None, *, overwrite: bool = False,
                 progress: bool = True, root: str | Path | None = None, ranks: Ranks = SINGLE,
                 reader: ReaderFactory | None = None) -> Store:
    """:func:`capture_models` over a pair's roles (``spec``, ``reader``: as there). A pair that holds one
    model at a time (``resident="one"``) is captured one role after the other, each into a one-role
    store cut into the same shards, then merged shard by shard into the store (the same bytes as
    capturing all roles at once); each step resumes after an interruption. ``ranks``: data-parallel
    under torchrun (see :func:`capture`)."""
    want = spec or CaptureSpec()
    roles = list(dict.fromkeys(roles))
    shown = progress and ranks.leader
    if pair.resident == "all" or pair.shares_weights(roles):
        return capture_models({r: pair[r] for r in roles}, items, out, want, overwrite=overwrite, root=root,
                              progress=shown, ranks=ranks, reader=reader)
    path = resolve(out, root)
    with locks.exclusive(path) if ranks.leader else contextlib.nullcontext():
        if overwrite and ranks.leader:
            locks.clear(path)
        ranks.barrier()
        intact = None if overwrite else intact_pair_store(path, pair, roles, items, want)
        if intact is not None:  # nothing to do: no model is loaded
            return intact
        parts = {r: capture_models({r: pair[r]}, items, path / f".part-{r}", want, plan_roles=len(roles),
                                   progress=shown, ranks=ranks, reader=reader)
                 for r in roles}
        pair.release()
        if ranks.leader:
            store = merge_role_stores(parts, path)
            for part in parts.values():
                shutil.rmtree(part.path, ignore_errors=True)
        ranks.barrier()
        return store if ranks.leader else Store.open(path)


def capture_pair_shared(pair: ModelPair, roles: Sequence[str], texts: Callable[[], Sequence[Mapping[str, Any]]],
                        path: Path, spec: CaptureSpec, overwrite: bool = False, ranks: Ranks = SINGLE,
                        reader: ReaderFactory | None = None) -> Store | None:
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
        store = capture_pair(pair, roles, items, path, spec, ranks=ranks, reader=reader)
        if ranks.leader:
            shared.unlink(missing_ok=True)
    return store if ranks.leader else None
