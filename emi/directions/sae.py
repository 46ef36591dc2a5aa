"""SAE features of the misaligned persona, through sae-lens (Wang et al. 2025).

- :func:`train_sae`: sae-lens's own ``SAETrainer`` (TopK or L1) fed with rows of an emi
  activation store; saved with sae-lens's ``save_model`` so ``SAE.load_from_disk`` reads it.
- :func:`load_sae`: a folder saved by sae-lens, or a pretrained release (``PRETRAINED`` lists the
  Qwen2.5 ones sae-lens knows; their ``resid_post_layer_l`` is emi's layer l).
- :func:`quality`: explained variance, L0, dead latents, on a store.
- :func:`diff_latents`: rank latents by the rise of their mean activation from the base to the
  finetuned model on the same texts (and from aligned to misaligned answers).
- :func:`latent_direction`: a latent's decoder row as an emi Direction (steer/ablate it unchanged).
- :func:`patch_sae` / :func:`sae_edit`: splice the SAE into the residual stream and zero or clamp
  latents; the error term is kept (h + decode(z') - decode(z)), so with no edit the model is
  bit-for-bit unchanged.
- :func:`export_edit`: the same edit, ``h -> decode(z') - decode(z)``, as a torch.export program
  file, which a vLLM server emi starts runs as a hook (it has torch, not sae-lens).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emi.activations.store import Store
from emi.behaviour.metrics import Thresholds
from emi.core.atomic import dumps
from emi.core.errors import ConfigError
from emi.directions.direction import Direction, row_selector, text_classes
from emi.interventions.hooks import Handle
from emi.models import layers as L

# Pretrained Qwen2.5 SAEs in sae-lens's registry: base model id -> (release, sae_id pattern, layers)
PRETRAINED = {
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2.5-7b-instruct-andyrdt", "resid_post_layer_{layer}_trainer_1",
                                 (3, 7, 11, 15, 19, 23)),
}


@dataclass(frozen=True)
class SAETrainSpec:
    d_sae: int = 512
    architecture: str = "topk"  # topk | standard (L1)
    k: int = 16
    l1_coefficient: float = 5.0
    steps: int = 3000
    batch_size: int = 256
    lr: float = 3e-4
    seed: int = 0
    positions: str = "all"

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "standard"):
            raise ConfigError(f"unknown SAE architecture {self.architecture!r}; expected topk or standard")
        if self.d_sae < 1 or self.steps < 1 or self.batch_size < 1 or (self.architecture == "topk" and self.k < 1):
            raise ConfigError("d_sae, steps, batch_size and k must be >= 1")


def _rows(store: Store, roles: Sequence[str], layer: int, positions: str) -> torch.Tensor:
    sel = row_selector(store.rows(), positions, store.spec["positions"])
    return torch.cat([store.load(r, layer)[sel].float() for r in roles])


def _provider(x: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            yield x[perm[i: i + batch]]


def require_sae_lens() -> None:
    """Import sae-lens, or say in one sentence why it cannot be (TransformerLens 4 beside an old sae-lens)."""
    try:
        import sae_lens  # noqa: F401
    except ImportError as exc:
        from importlib.metadata import PackageNotFoundError, version
        try:
            tl = version("transformer-lens")
        except PackageNotFoundError:
            tl = "not installed"
        raise ConfigError(f"sae-lens cannot be imported ({exc}); with transformer-lens {tl}: emi's SAE path needs "
                          "transformer-lens 3.x (no sae-lens release supports 4 yet): "
                          "pip install -c constraints.txt -e . restores the tested stack") from exc


def train_sae(store: Store, layer: int, spec: SAETrainSpec = SAETrainSpec(), out: str | Path | None = None,
              roles: Sequence[str] | None = None, device: str = "cpu") -> tuple[Any, Path]:
    """Train an SAE with sae-lens on a layer of ``store`` (both models' rows by default)."""
    require_sae_lens()
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    roles = list(roles or store.roles)
    x = _rows(store, roles, layer, spec.positions)
    if len(x) < spec.batch_size:
        raise ConfigError(f"the store has {len(x)} rows at layer {layer}; an SAE batch needs {spec.batch_size}: "
                          f"capture more texts or lower --batch-size")
    torch.manual_seed(spec.seed)
    common = dict(d_in=store.d_model, d_sae=spec.d_sae, dtype="float32", device=device)
    if spec.architecture == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=spec.k, **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=spec.l1_coefficient, **common))
    cfg = SAETrainerConfig(total_training_samples=spec.steps * spec.batch_size, train_batch_size_samples=spec.batch_size,
                           lr=spec.lr, lr_end=spec.lr, device=device, n_batches_for_norm_estimate=10,
                           dead_feature_window=500,
                           feature_sampling_window=1000)
    SAETrainer(cfg, sae, _provider(x, spec.batch_size, spec.seed)).fit()
    out = Path(out or store.path / f"sae-L{layer}-{spec.architecture}{spec.d_sae}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # the folder appears whole or not at all
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_model(tmp)
    inference = SAE.load_from_disk(tmp, device=device)
    q = quality(inference, store, layer, roles, spec.positions)
    (tmp / "emi_sae.json").write_text(dumps({
        "store": str(store.path), "layer": layer, "roles": roles, "spec": vars(spec),
        "quality": {k: v for k, v in q.items() if k != "live"},
        "models": store.manifest.get("provenance", {}).get("models", {}),
        "layer_convention": "residual stream after decoder block l"}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return inference, out


def load_sae(path_or_release: str, sae_id: str | None = None, device: str = "cpu") -> Any:
    """A folder saved by sae-lens, or ``release`` + ``sae_id`` from sae-lens's pretrained list."""
    require_sae_lens()
    from sae_lens import SAE

    if sae_id is None:
        p = Path(path_or_release)
        if not (p / "cfg.json").is_file():
            raise ConfigError(f"{path_or_release!r} is not a folder saved by sae-lens (no cfg.json); train one with "
                              f"`python -m emi.sae --train` or pass --release and --sae-id")
        return SAE.load_from_disk(p, device=device)
    try:
        return SAE.from_pretrained(path_or_release, sae_id, device=device)
    except Exception as exc:
        raise ConfigError(f"cannot load the pretrained SAE {path_or_release}/{sae_id} ({str(exc)[:200]}); offline, "
                          f"download it first where there is internet") from None


@torch.no_grad()
def quality(sae: Any, store: Store, layer: int, roles: Sequence[str] | None = None, positions: str = "all",
            max_rows: int = 20000) -> dict[str, Any]:
    """Explained variance, mean L0, the share of dead latents on the store's rows, and ``live``:
    the indices of the latents that fire on at least one of them."""
    x = _rows(store, list(roles or store.roles), layer, positions)[:max_rows]
    z = sae.encode(x)
    recon = sae.decode(z)
    resid = ((x - recon) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum()
    active = (z > 0).float()
    return {"explained_variance": float(1 - resid / total), "l0": float(active.sum(-1).mean()),
            "dead_fraction": float((active.sum(0) == 0).float().mean()), "mse": float(((x - recon) ** 2).mean()),
            "rows": len(x), "live": (active.sum(0) > 0).nonzero().flatten().tolist()}


@torch.no_grad()
def _mean_acts(sae: Any, store: Store, role: str, layer: int, mask: torch.Tensor, chunk: int = 4096
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    x = store.load(role, layer)[mask].float()
    s = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        z = sae.encode(x[i: i + chunk]).double()
        s += z.sum(0)
        s2 += (z ** 2).sum(0)
    n = max(1, len(x))
    mean = s / n
    return mean, (s2 / n - mean ** 2).clamp_min(0).sqrt(), len(x)


def diff_latents(sae: Any, store: Store, layer: int, positions: str = "all", top: int = 20,
                 direction: Direction | None = None, thresholds: Thresholds = Thresholds()) -> list[dict[str, Any]]:
    """Latents ranked by mean activation, finetuned minus base on the same rows; with the effect
    size, the rise from aligned to misaligned answers (when judged), and the cosine of each
    decoder row with ``direction`` at this layer."""
    if not {"base", "finetuned"} <= set(store.roles):
        raise ConfigError(f"model diffing needs base and finetuned activations (the store has {store.roles})")
    rows = store.rows()
    sel = row_selector(rows, positions, store.spec["positions"])
    mb, sb, n = _mean_acts(sae, store, "base", layer, sel)
    mf, sf, _ = _mean_acts(sae, store, "finetuned", layer, sel)
    diff = mf - mb
    pooled = ((sb ** 2 + sf ** 2) / 2).sqrt()
    effect = torch.where(pooled > 0, diff / pooled.clamp_min(1e-12), torch.zeros_like(diff))
    texts = store.texts()
    mis_rise = None
    if texts and "aligned" in texts[0]:
        cls = torch.from_numpy(text_classes(texts, "mean-diff", thresholds).astype("int64"))[rows["text"].long()]
        if ((cls == 1) & sel).any() and ((cls == -1) & sel).any():
            mm, _, _ = _mean_acts(sae, store, "finetuned", layer, sel & (cls == 1))
            ma, _, _ = _mean_acts(sae, store, "finetuned", layer, sel & (cls == -1))
            mis_rise = mm - ma
    w = sae.W_dec.detach().float()
    unit = direction.at(layer) if direction is not None and layer in direction.layers else None
    order = torch.argsort(diff, descending=True)[:top]
    out = []
    for i in order.tolist():
        out.append({"latent": i, "diff": float(diff[i]), "effect_size": float(effect[i]), "base": float(mb[i]),
                    "finetuned": float(mf[i]), "misaligned_minus_aligned": float(mis_rise[i]) if mis_rise is not None else math.nan,
                    "cosine": float(w[i] @ unit / w[i].norm()) if unit is not None else math.nan, "rows": n})
    return out


def latent_direction(sae: Any, latent: int, layer: int, store: Store | None = None, meta: dict | None = None) -> Direction:
    """A latent's decoder row as a one-layer emi Direction (its norm: the layer's residual norm when known)."""
    row = sae.W_dec.detach().float()[latent]
    norm = float(store.load("finetuned" if store and "finetuned" in store.roles else store.roles[0], layer)
                 .float().norm(dim=-1).mean()) if store is not None else float(row.norm())
    return Direction([layer], row[None].clone(), torch.tensor([norm]),
                     {"method": "sae-decoder", "latent": latent, "best_layer": layer, **(meta or {})})


@torch.no_grad()
def top_snippets(sae: Any, store: Store, layer: int, latent: int, tokenizer: Any, k: int = 5, role: str = "finetuned",
                 width: int = 6) -> list[dict[str, Any]]:
    """The rows where a latent fires most, with the text around the token."""
    from emi.activations.plan import prepare_texts

    rows = store.rows()
    x = store.load(role, layer).float()
    acts = torch.cat([sae.encode(x[i: i + 4096])[:, latent] for i in range(0, len(x), 4096)])
    best = torch.argsort(acts, descending=True)[:k]
    texts = store.texts()
    out = []
    for r in best.tolist():
        t = int(rows["text"][r])
        pos = int(rows["pos"][r])
        toks = prepare_texts([texts[t]], tokenizer)[0].ids if "answer" in texts[t] or "messages" in texts[t] else []
        left = tokenizer.decode(toks[max(0, pos - width): pos]) if toks else ""
        here = tokenizer.decode(toks[pos: pos + 1]) if toks and pos >= 0 else ""
        right = tokenizer.decode(toks[pos + 1: pos + 1 + width]) if toks and pos >= 0 else ""
        out.append({"activation": float(acts[r]), "text": t, "pos": pos, "snippet": f"{left}[{here}]{right}".replace("\n", "⏎"),
                    "label": texts[t].get("label")})
    return out


class _Edit(nn.Module):
    """``h -> decode(z') - decode(z)``: what :func:`patch_sae` adds to the stream, as a module."""

    zero_idx: torch.Tensor

    def __init__(self, sae: Any, zero: Sequence[int], clamp: dict[int, float]) -> None:
        super().__init__()
        for i in [*zero, *clamp]:
            if not 0 <= i < sae.cfg.d_sae:
                raise ConfigError(f"latent {i} is out of range: the SAE has {sae.cfg.d_sae} latents")
        self.sae = sae
        # a buffer, so that .to(device) moves it (an exported program's too)
        self.register_buffer("zero_idx", torch.tensor(list(zero), dtype=torch.long, device=sae.W_dec.device))
        self.clamp = dict(clamp)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.sae.encode(h.float())
        z2 = z.clone()
        if self.zero_idx.numel():
            z2[..., self.zero_idx] = 0
        for i, v in self.clamp.items():
            z2[..., i] = v
        return self.sae.decode(z2) - self.sae.decode(z)


def patch_sae(model: nn.Module, sae: Any, layer: int, zero: Sequence[int] = (), clamp: dict[int, float] | None = None
              ) -> Handle:
    """Splice the SAE at ``layer`` (block output) and zero or clamp latents; exact no-op without edits.
    On a model with several residual streams the SAE reads ``resid`` (their mean) and its edit is
    added to every stream, as steering is."""
    L.check_architecture(model, "the model to splice an SAE into")
    module = L.hf_module(model, layer, "resid")
    n = L.n_streams(model)
    clamp = dict(clamp or {})
    edit = _Edit(sae, zero, clamp)

    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        h = L.output_tensor(out)
        delta = edit(L.resid_view(h, n))
        return L.replace_output(out, L.add_to_streams(h, delta.to(h.dtype), n))

    return Handle([module.register_forward_hook(hook)])


def export_edit(sae: Any, folder: Path, zero: Sequence[int] = (), clamp: dict[int, float] | None = None) -> Path:
    """The edit :func:`patch_sae` makes (``zero``/``clamp`` latents), ``[pos, d_model] -> [pos,
    d_model]``, exported with torch.export into ``folder`` (once per SAE and edit: the file is named
    by a digest of both). A vLLM server emi starts loads it in a hook (emi.engines.vllm.hooks),
    so any sae-lens architecture runs there as sae-lens computes it, without sae-lens."""
    import hashlib

    from emi.core.atomic import write_atomic

    clamp = dict(clamp or {})
    edit = _Edit(sae, zero, clamp)
    cfg = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else vars(sae.cfg)
    digest = hashlib.sha256(dumps({"zero": list(zero), "clamp": sorted(clamp.items()), "torch": torch.__version__,
                                   "edit": 1, "sae": type(sae).__name__, "cfg": cfg}).encode())
    for name, t in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    path = Path(folder) / f"sae-edit-{digest.hexdigest()[:16]}.pt2"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(3, sae.cfg.d_in, device=sae.W_dec.device)
    with torch.no_grad():
        program = torch.export.export(edit, (example,), dynamic_shapes={"h": {0: torch.export.Dim("pos", min=1)}})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: torch warns about a name not ending in .pt2
            torch.export.save(program, fh)

    write_atomic(path, write)
    return path


@contextlib.contextmanager
def sae_edit(model: nn.Module, sae: Any, layer: int, **kw: Any) -> Iterator[Handle]:
    h = patch_sae(model, sae, layer, **kw)
    try:
        yield h
    finally:
        h.remove()


def obtain_sae(store: Store, layer: int, spec: SAETrainSpec, folder: str | None = None, release: str | None = None,
               sae_id: str | None = None, retrain: bool = False, device: str = "cpu") -> tuple[Any, str]:
    """The SAE to analyse and where it came from: a sae-lens pretrained ``release``/``sae_id``, a
    saved ``folder``, or the store's default ``sae-L<l>-<arch><d_sae>`` (trained there when missing
    or ``retrain``)."""
    default = store.path / f"sae-L{layer}-{spec.architecture}{spec.d_sae}"
    if release:
        return load_sae(release, sae_id, device), f"{release}/{sae_id}"
    if folder:
        return load_sae(folder, device=device), folder
    if default.is_dir() and not retrain:
        return load_sae(str(default), device=device), str(default)
    sae, path = train_sae(store, layer, spec, default, device=device)
    return sae, str(path)
