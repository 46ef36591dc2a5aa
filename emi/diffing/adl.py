"""Activation difference lens (Minder et al., ICLR 2026, "Narrow finetuning leaves clearly readable
traces in activation differences"): both models read the same unrelated text; per position j of
the first k tokens, delta_j = mean finetuned residual - mean base residual at one layer.

One pass per model over the corpus, batched; each batch's partial sums (per-position sums and
counts, the all-position sum, residual norms) are written atomically under ``work/`` so a killed
run resumes at the next batch. The all-position mean difference on the same text is kept too: the
pair's model-diff direction on that corpus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from emi.activations.readers import hf_reader
from emi.core.atomic import write_atomic, write_json
from emi.directions.direction import Direction
from emi.models.chat import pad_right
from emi.models.loading import ModelPair

KEYS = ("pos_sum", "pos_count", "pos_norm", "all_sum", "all_count", "all_norm")


@dataclass(frozen=True)
class AdlConfig:
    layer: int
    positions: int = 5  # delta_j for j in 0..positions-1
    max_tokens: int = 128  # first tokens of each text
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.positions < 1 or self.max_tokens < self.positions or self.batch_size < 1:
            raise ValueError("AdlConfig: positions >= 1, max_tokens >= positions and batch_size >= 1")


@dataclass
class AdlMeans:
    """The differences the lens reads, and the base's residual norms beside them."""

    layer: int
    deltas: Float[torch.Tensor, "pos d_model"]
    model_diff: Float[torch.Tensor, " d_model"]
    pos_norm: Float[torch.Tensor, " pos"]  # mean base residual norm at each position
    all_norm: float  # mean base residual norm over every position
    counts: list[int]
    n_texts: int
    n_tokens: int


def corpus_digest(corpus: Sequence[Sequence[int]]) -> str:
    return hashlib.sha256(json.dumps([list(x) for x in corpus]).encode()).hexdigest()[:16]


@torch.no_grad()
def batch_sums(reader: Any, ids: list[list[int]], pad_id: int, layer: int, k: int, device: Any
               ) -> dict[str, torch.Tensor]:
    """The partial sums of one batch (float64 on the CPU, so the order of batches does not matter)."""
    x, mask = pad_right(ids, pad_id, device)
    h = reader(x, mask)[("resid", layer)].double().cpu()  # [batch, pos, d_model]
    m = mask.cpu().double()
    kk = min(k, h.shape[1])
    pos = torch.zeros(k, h.shape[-1], dtype=torch.float64)
    cnt = torch.zeros(k, dtype=torch.float64)
    nrm = torch.zeros(k, dtype=torch.float64)
    pos[:kk] = (h[:, :kk] * m[:, :kk, None]).sum(0)
    cnt[:kk] = m[:, :kk].sum(0)
    norms = h.norm(dim=-1) * m
    nrm[:kk] = norms[:, :kk].sum(0)
    return {"pos_sum": pos, "pos_count": cnt, "pos_norm": nrm, "all_sum": (h * m[..., None]).sum((0, 1)),
            "all_count": m.sum().reshape(1), "all_norm": norms.sum().reshape(1)}


def role_sums(pair: ModelPair, role: str, corpus: Sequence[Sequence[int]], cfg: AdlConfig, work: Path,
              progress: bool = True) -> dict[str, torch.Tensor]:
    """One pass of ``role`` over the corpus; batches already in ``work`` are read, not run."""
    work.mkdir(parents=True, exist_ok=True)
    batches = [list(corpus[i: i + cfg.batch_size]) for i in range(0, len(corpus), cfg.batch_size)]
    files = [work / f"{role}-{i:06d}.safetensors" for i in range(len(batches))]
    total: dict[str, torch.Tensor] = {}
    todo = [i for i, f in enumerate(files) if not f.is_file()]
    if todo:
        lm = pair[role]
        with lm.active() as model:
            reader = hf_reader(model, [cfg.layer])
            pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
            for i in tqdm(todo, desc=f"adl {role}", disable=not progress, leave=False):
                sums = batch_sums(reader, batches[i], pad, cfg.layer, cfg.positions, lm.device)
                write_atomic(files[i], lambda tmp, s=sums: save_file(s, str(tmp)))
    for f in files:
        part = load_file(str(f))
        for key in KEYS:
            total[key] = total[key] + part[key] if key in total else part[key]
    return total


def prepare_work(out: Path, identity: Mapping[str, object], name: str = "work") -> Path:
    """``out/<name>``, emptied when it holds partial sums of another corpus, layer or pair."""
    work = out / name
    spec_file = work / "spec.json"
    if spec_file.is_file() and json.loads(spec_file.read_text()) != json.loads(json.dumps(identity)):
        for f in work.glob("*.safetensors"):
            f.unlink()
    work.mkdir(parents=True, exist_ok=True)
    write_json(spec_file, identity)
    return work


def adl_means(pair: ModelPair, corpus: Sequence[Sequence[int]], cfg: AdlConfig, out: Path,
              progress: bool = True) -> AdlMeans:
    """delta_j and the model-diff direction on ``corpus``, one resumable pass per model."""
    identity = {"corpus": corpus_digest(corpus), "layer": cfg.layer, "positions": cfg.positions,
                "batch_size": cfg.batch_size, "base": pair.spec.base.label(), "finetuned": pair.spec.finetuned.label()}
    work = prepare_work(out, identity)
    base = role_sums(pair, "base", corpus, cfg, work, progress)
    ft = role_sums(pair, "finetuned", corpus, cfg, work, progress)
    cnt = base["pos_count"].clamp_min(1)
    deltas = (ft["pos_sum"] - base["pos_sum"]) / cnt[:, None]
    n_all = float(base["all_count"][0])
    model_diff = (ft["all_sum"] - base["all_sum"]) / max(n_all, 1.0)
    return AdlMeans(cfg.layer, deltas.float(), model_diff.float(), (base["pos_norm"] / cnt).float(),
                    float(base["all_norm"][0]) / max(n_all, 1.0), [int(c) for c in base["pos_count"].tolist()],
                    len(corpus), int(n_all))


def as_direction(vec: Float[torch.Tensor, " d_model"], layer: int, resid_norm: float, meta: Mapping[str, object]
                 ) -> Direction:
    """An emi direction at one layer (what emi.steer --direction, emi.export and the figures take)."""
    d = Direction([layer], vec.float()[None].clone(), torch.tensor([resid_norm], dtype=torch.float32), dict(meta))
    d.choose_layer(layer, f"the layer {meta.get('method', 'diffing')} read")
    return d
