"""The on-disk activation store: ``activations/<name>/``.

Layout::

    manifest.json        spec (models, layers, sites, positions, dtype, d_model, ...) + shard list
    texts.jsonl          one record per captured text (question, sample, judge labels, ...)
    shard-00000.safetensors
        "<role>/<site>/<layer>"   [rows, d_model] activations, stored in the spec's dtype
        "row.text"                [rows] index into texts.jsonl
        "row.pos"                 [rows] token position in the text (-1 for a response mean)
        "row.response"            [rows] 1 for an answer token, 2 for a token of the thought
                                  written before it (thinking on), 0 for a prompt token

Shards are written whole to a temporary file, fsynced and renamed into place, then the
manifest (also replaced atomically) records their sha256: a reader never sees half a shard,
and a corrupted or truncated shard is named in the error. Reads are lazy: one tensor of one
shard at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save

from emi.core import jsonl
from emi.core.atomic import dumps, write_atomic, write_json
from emi.core.errors import ConfigError, StoreError
from emi.core.paths import DTYPES

FORMAT = "emi.activations.store/1"
DEFAULT_ROOT = Path("activations")
META_KEYS = ("row.text", "row.pos", "row.response")
THOUGHTS = "between prompt and answer"


REPAIR = ("re-run the same `python -m emi.cache` command: it verifies the store and rebuilds exactly the "
          "damaged shards")


class ModelIdentity(TypedDict, total=False):
    """Which checkpoint a role's rows came from (a resumed capture must be of the same)."""

    resolved: str | None
    revision: str | None
    adapter: str | None
    commit: str | None
    reader: str  # a reader other than the HF hooks (e.g. vllm)


class StoreSpec(TypedDict, total=False):
    """What a store holds; a capture resumes a store only with the same spec."""

    roles: list[str]
    layers: list[int]
    sites: list[str]
    positions: str
    dtype: str
    d_model: int
    shard_texts: int
    shard_mb: int
    models: dict[str, ModelIdentity]
    layer_convention: str
    texts_sha256: str  # the texts' hash and count, added by the writer
    n_texts: int
    # THOUGHTS where some text's thought is captured between its prompt and answer (row.response 2); absent
    # otherwise, as in stores from before thoughts were captured, which a capture of thoughts does not resume
    thoughts: str


class ShardEntry(TypedDict):
    """One shard file as the manifest lists it."""

    file: str
    texts: list[int]  # [start, end) of the texts whose rows it holds
    rows: int
    tokens: int
    bytes: int
    sha256: str


class StoreProvenance(TypedDict, total=False):
    """Each role's model provenance (emi.models.loading.ModelProvenance) when it was captured."""

    models: dict[str, Mapping[str, object]]


class Manifest(TypedDict, total=False):
    """``manifest.json``: the spec, where the models came from, the shards written so far."""

    format: str
    spec: StoreSpec
    provenance: StoreProvenance
    shards: list[ShardEntry]
    complete: bool
    n_rows: int


Texts = Sequence[Mapping[str, object]]  # the captured texts' records (question, answer, labels, ...)


def tensor_key(role: str, layer: int, site: str = "resid") -> str:
    return f"{role}/{site}/{layer}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _texts_blob(texts: Texts) -> str:
    return "".join(dumps(t, sort_keys=True) + "\n" for t in texts)


def texts_digest(texts: Texts) -> str:
    """The hash a store's spec records for its texts (``texts_sha256``)."""
    return hashlib.sha256(_texts_blob(texts).encode()).hexdigest()


def _file_sha256(path: Path) -> str | None:
    return sha256(path) if path.is_file() else None


def is_complete(path: Path, spec: StoreSpec, texts: Texts) -> bool:
    """Read-only: whether ``path`` holds a finished store of this spec and these texts, with every
    shard file present at its recorded size (what all ranks of a data-parallel run check alike)."""
    mf = _read_manifest(path / "manifest.json") if (path / "manifest.json").is_file() else None
    if mf is None or not mf.get("complete"):
        return False
    want = {**spec, "texts_sha256": texts_digest(texts), "n_texts": len(texts)}
    return mf["spec"] == want and all((path / e["file"]).is_file() and (path / e["file"]).stat().st_size == e["bytes"]
                                      for e in mf["shards"])


def _read_manifest(path: Path) -> Manifest | None:
    """The manifest, or None when it is truncated or not an emi manifest."""
    try:
        mf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    ok = isinstance(mf, dict) and isinstance(mf.get("spec"), dict) and isinstance(mf.get("shards"), list)
    return mf if ok else None  # type: ignore[no-any-return]


def resolve(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """A store given by path, or by name under ``root`` (default ``activations/``)."""
    p = Path(name_or_path)
    if p.is_dir() or p.is_absolute() or len(p.parts) > 1:
        return p
    return Path(root or DEFAULT_ROOT) / p


@dataclass
class Store:
    path: Path
    manifest: Manifest
    verify: bool = True
    _verified: set[str] = field(default_factory=set, init=False, repr=False)

    # ---------------- opening ----------------
    @classmethod
    def open(cls, name_or_path: str | Path, root: str | Path | None = None, verify: bool = True,
             allow_incomplete: bool = False) -> Store:
        path = resolve(name_or_path, root)
        mf = path / "manifest.json"
        if not mf.is_file():
            parts = sorted(p.name.removeprefix(".part-") for p in path.glob(".part-*"))
            if parts:
                raise StoreError(f"the store {str(path)!r} is incomplete (a capture of one model at a time stopped "
                                 f"after parts {', '.join(parts)}); re-run the capture command to resume it")
            raise StoreError(f"no activation store at {str(path)!r} (no manifest.json); create one with "
                             f"`python -m emi.cache --out {path}`")
        manifest = _read_manifest(mf)
        if manifest is None:
            raise StoreError(f"the manifest of {str(path)!r} is truncated or not an emi manifest; the store is "
                             f"damaged: re-run the same `python -m emi.cache` command to rebuild it")
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{str(path)!r} is not an emi store of format {FORMAT} (found {manifest.get('format')!r})")
        if not manifest.get("complete") and not allow_incomplete:
            raise StoreError(f"the store {str(path)!r} is incomplete ({len(manifest['shards'])} shards of a "
                             f"run that did not finish); re-run the capture command to resume it")
        return cls(path, manifest, verify)

    # ---------------- spec ----------------
    @property
    def spec(self) -> StoreSpec:
        return self.manifest["spec"]

    @property
    def layers(self) -> list[int]:
        return list(self.spec["layers"])

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        """``layers``, or a ConfigError naming those the store lacks."""
        missing = [x for x in layers if x not in self.layers]
        if missing:
            raise ConfigError(f"layers {missing} are not in the store (it has {self.layers})")
        return list(layers)

    @property
    def roles(self) -> list[str]:
        return list(self.spec["roles"])

    @property
    def sites(self) -> list[str]:
        return list(self.spec["sites"])

    @property
    def d_model(self) -> int:
        return int(self.spec["d_model"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.spec["dtype"]]

    @property
    def n_rows(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    def texts(self) -> list[dict[str, Any]]:
        """The captured texts' records, checked against the manifest (count and hash)."""
        f = self.path / "texts.jsonl"
        if self.verify and _file_sha256(f) != self.spec.get("texts_sha256", _file_sha256(f)):
            raise StoreError(f"texts.jsonl of {str(self.path)!r} is missing, truncated or altered; {REPAIR}")
        out = jsonl.read(f)
        if len(out) != self.spec.get("n_texts", len(out)):
            raise StoreError(f"texts.jsonl of {str(self.path)!r} holds {len(out)} texts, the manifest "
                             f"{self.spec['n_texts']}; {REPAIR}")
        return out

    # ---------------- reading ----------------
    def _shard(self, entry: ShardEntry) -> Path:
        f = self.path / entry["file"]
        if not f.is_file():
            raise StoreError(f"shard {entry['file']} of {str(self.path)!r} is missing; {REPAIR}")
        if f.stat().st_size != entry["bytes"]:
            raise StoreError(f"shard {entry['file']} of {str(self.path)!r} is truncated or altered "
                             f"({f.stat().st_size} bytes, expected {entry['bytes']}); {REPAIR}")
        if self.verify and entry["file"] not in self._verified:
            if sha256(f) != entry["sha256"]:
                raise StoreError(f"shard {entry['file']} of {str(self.path)!r} is corrupted (checksum mismatch); "
                                 f"{REPAIR}")
            self._verified.add(entry["file"])
        return f

    def _check(self, role: str, layer: int, site: str) -> str:
        if role not in self.roles:
            raise StoreError(f"the store has no model {role!r}; it has {', '.join(self.roles)}")
        if site not in self.sites:
            raise StoreError(f"the store has no site {site!r}; it has {', '.join(self.sites)}")
        if layer not in self.layers:
            raise StoreError(f"the store has no layer {layer}; it has layers {self.layers}")
        return tensor_key(role, layer, site)

    def _read(self, entry: ShardEntry, key: str) -> torch.Tensor:
        f = self._shard(entry)
        try:
            with safe_open(str(f), framework="pt") as fh:
                return fh.get_tensor(key)
        except Exception as exc:
            raise StoreError(f"cannot read {key!r} from shard {entry['file']} of {str(self.path)!r}: {exc}") from None

    def iter_shards(self, role: str, layer: int, site: str = "resid") -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Stream (activations [rows, d_model], row metadata) one shard at a time."""
        key = self._check(role, layer, site)
        for entry in self.manifest["shards"]:
            yield self._read(entry, key), {k: self._read(entry, k) for k in META_KEYS}

    def load(self, role: str, layer: int, site: str = "resid", rows: Int[torch.Tensor, " n"] | None = None
             ) -> Float[torch.Tensor, "n d_model"]:
        """All rows (or the selected global row indices) of one layer, as stored."""
        key = self._check(role, layer, site)
        parts, start = [], 0
        for entry in self.manifest["shards"]:
            n = entry["rows"]
            if rows is None:
                parts.append(self._read(entry, key))
            else:
                sel = rows[(rows >= start) & (rows < start + n)] - start
                if len(sel):
                    parts.append(self._read(entry, key)[sel])
            start += n
        if not parts:
            return torch.empty(0, self.d_model, dtype=self.dtype)
        return torch.cat(parts)

    def rows(self) -> dict[str, torch.Tensor]:
        """Row metadata for the whole store: text index, token position, response flag."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in META_KEYS}
        for entry in self.manifest["shards"]:
            for k in META_KEYS:
                out[k].append(self._read(entry, k))
        return {k.split(".")[1]: (torch.cat(v) if v else torch.empty(0, dtype=torch.long)) for k, v in out.items()}

    def read_shard(self, index: int, with_meta: bool = True) -> dict[str, torch.Tensor]:
        """Every tensor of shard ``index`` (activations; row metadata too with ``with_meta``)."""
        entry = self.manifest["shards"][index]
        f = self._shard(entry)
        with safe_open(str(f), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys() if with_meta or k not in META_KEYS}


class StoreWriter:
    """Creates or resumes a store; refuses to resume with a different spec.

    Resuming verifies what is there: shards that are missing, truncated or fail their checksum
    are dropped from the manifest (and ``repaired`` names them), so the capture recomputes exactly
    those; a damaged ``texts.jsonl`` is rewritten from the run's texts; a damaged manifest starts
    the store over (it is the only record of what the shards hold).
    """

    def __init__(self, path: Path, spec: StoreSpec, texts: Texts, provenance: StoreProvenance | None = None,
                 overwrite: bool = False) -> None:
        self.path = path
        self.repaired: list[str] = []
        path.mkdir(parents=True, exist_ok=True)
        mf = path / "manifest.json"
        texts_blob = _texts_blob(texts)
        spec = {**spec, "texts_sha256": hashlib.sha256(texts_blob.encode()).hexdigest(), "n_texts": len(texts)}
        for stale in path.glob(".*.tmp-*"):  # from a run killed mid-write
            stale.unlink(missing_ok=True)
        old = _read_manifest(mf) if mf.is_file() and not overwrite else None
        if mf.is_file() and not overwrite and old is None:
            self.repaired.append("manifest.json (unreadable: the store is rebuilt)")
        if old is not None:
            diffs = [k for k in sorted(set(old["spec"]) | set(spec)) if old["spec"].get(k) != spec.get(k)]
            if diffs:
                detail = "; ".join(f"{k}: store has {old['spec'].get(k)!r}, this run {spec.get(k)!r}" for k in diffs[:3])
                raise StoreError(f"the store {str(path)!r} was made with a different setup ({detail}); use another "
                                 f"--out, or --overwrite to replace it")
            self.manifest = old
            self._drop_unlisted()
            self._drop_damaged()
            if _file_sha256(path / "texts.jsonl") != spec["texts_sha256"]:
                self.repaired.append("texts.jsonl")
                write_atomic(path / "texts.jsonl", lambda tmp: tmp.write_text(texts_blob))
            if self.repaired:
                self.manifest["complete"] = False
                write_json(mf, self.manifest)
        else:
            for f in path.glob("shard-*.safetensors"):
                f.unlink()
            self.manifest = Manifest(format=FORMAT, spec=spec, provenance=provenance or StoreProvenance(), shards=[],
                                     complete=False)

            def w(tmp: Path) -> None:
                tmp.write_text(texts_blob)

            write_atomic(path / "texts.jsonl", w)
            write_json(mf, self.manifest)

    def _drop_unlisted(self) -> None:
        listed = {s["file"] for s in self.manifest["shards"]}
        for f in self.path.glob("shard-*.safetensors"):
            if f.name not in listed:  # written, but the run died before the manifest named it
                f.unlink()

    def _drop_damaged(self) -> None:
        keep = []
        for entry in self.manifest["shards"]:
            f = self.path / entry["file"]
            ok = f.is_file() and f.stat().st_size == entry["bytes"] and sha256(f) == entry["sha256"]
            if ok:
                keep.append(entry)
            else:
                self.repaired.append(entry["file"])
                f.unlink(missing_ok=True)
        self.manifest["shards"] = keep

    @property
    def done(self) -> set[tuple[int, int]]:
        """The text ranges [start, end) whose shards are written and verified."""
        return {tuple(s["texts"]) for s in self.manifest["shards"]}  # type: ignore[misc]

    @property
    def done_texts(self) -> int:
        return sum(s["texts"][1] - s["texts"][0] for s in self.manifest["shards"])

    def add_shard(self, tensors: dict[str, torch.Tensor], texts: tuple[int, int], tokens: int,
                  index: int | None = None) -> None:
        """Write one shard (``index``: its place in the store's shard plan; default: the next)."""
        index = len(self.manifest["shards"]) if index is None else index
        name = f"shard-{index:05d}.safetensors"
        rows = int(tensors["row.text"].shape[0])
        data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": FORMAT})
        digest = hashlib.sha256(data).hexdigest()  # of the bytes written: no second read of the file

        def w(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)

        write_atomic(self.path / name, w)
        self._record(ShardEntry(file=name, texts=list(texts), rows=rows, tokens=tokens, bytes=len(data),
                                sha256=digest))

    def adopt_shard(self, source: Path, entry: ShardEntry, index: int) -> None:
        """Copy a shard another writer made for the same spec and texts (a data-parallel rank's
        part), verifying its bytes against ``entry`` (that writer's manifest entry)."""
        data = source.read_bytes()
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StoreError(f"{str(source)!r} does not match its manifest entry (damaged); re-run the same command "
                             f"to capture it again")
        name = f"shard-{index:05d}.safetensors"

        def w(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)

        write_atomic(self.path / name, w)
        self._record({**entry, "file": name})

    def _record(self, entry: ShardEntry) -> None:
        entries = [s for s in self.manifest["shards"] if s["file"] != entry["file"]]
        entries.append(entry)
        self.manifest["shards"] = sorted(entries, key=lambda s: s["texts"][0])
        write_json(self.path / "manifest.json", self.manifest)

    def finish(self) -> Store:
        self.manifest["complete"] = True
        self.manifest["n_rows"] = sum(s["rows"] for s in self.manifest["shards"])
        write_json(self.path / "manifest.json", self.manifest)
        return Store.open(self.path)
