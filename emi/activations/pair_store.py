"""A pair's store captured one role at a time: verifying the store that stands, and merging the
one-role stores into it shard by shard."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from emi.activations.plan import CaptureSpec, Item, prepare_texts, thought_spec
from emi.activations.store import Store, StoreProvenance, StoreSpec, StoreWriter
from emi.core.errors import ConfigError, StoreError
from emi.models.loading import ModelPair


def intact_pair_store(path: Path, pair: ModelPair, roles: Sequence[str], items: Sequence[Item],
                      want: CaptureSpec) -> Store | None:
    """The complete store at ``path`` when it verifies (every shard, the texts) and was captured
    from these checkpoints and texts as ``want`` asks (its layers where they are indices, sites,
    positions, and its dtype where it names one); None when it must be (re)built. Nothing is loaded."""
    from emi.activations.store import texts_digest
    from emi.models.loading import locate

    try:
        store = Store.open(path)
        spec = store.spec
        texts = prepare_texts(items, pair.tokenizer)
        want_layers = spec["layers"] if isinstance(want.layers, str) else list(want.layers)
        same = (spec["roles"] == list(roles) and spec["sites"] == list(want.sites)
                and spec["positions"] == want.positions and spec["layers"] == want_layers
                and (want.dtype is None or spec["dtype"] == want.dtype)
                and spec.get("thoughts") == thought_spec(texts).get("thoughts")
                and spec["texts_sha256"] == texts_digest([t.meta for t in texts]))
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
    spec = StoreSpec(**first.spec)
    spec.pop("texts_sha256", None)
    spec.pop("n_texts", None)
    spec["roles"] = list(parts)
    spec["models"] = {r: p.spec["models"][r] for r, p in parts.items()}
    prov = StoreProvenance(models={r: p.manifest["provenance"]["models"][r] for r, p in parts.items()})
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
