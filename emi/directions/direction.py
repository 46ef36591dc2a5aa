"""The misaligned-persona direction by mean difference, as an artifact others can load.

Methods (each per layer, streamed over an activation store):

- ``mean-diff``  misaligned minus aligned answers of one model (Soligo, Turner et al. 2025):
  rows of answers judged misaligned (aligned <= 30, coherent > 50) minus rows of answers judged
  aligned (aligned > 70, coherent > 50).
- ``model-diff`` finetuned minus base on the same texts (model diffing).
- ``contrast``   texts generated under two conditions (an evil vs a helpful system prompt, or a
  villain vs an aligned earlier context; persona-vectors style), each filtered by the judge.

Positions: ``response`` (mean over answer tokens: the published recipe) or ``last_prompt`` (the
token before the answer, where the model decides which persona to voice).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file

from emi.activations.store import Store, write_atomic, write_json
from emi.behaviour.metrics import Thresholds, is_aligned, is_misaligned
from emi.core.atomic import dumps
from emi.core.errors import ConfigError, DirectionError

if TYPE_CHECKING:
    from emi.models.plan import PairPlan

METHODS = ("mean-diff", "model-diff", "contrast")
DIR_POSITIONS = ("response", "last_prompt", "thought", "all")


@dataclass
class Direction:
    """Vectors per layer (raw mean differences), with the residual norm at each layer."""

    layers: list[int]
    raw: Float[torch.Tensor, "layer d_model"]  # raw mean differences
    resid_norm: Float[torch.Tensor, " layer"]  # mean residual norm of the rows used
    meta: dict[str, Any] = field(default_factory=dict)
    # why best_layer is a fallback (no criterion could choose one), or None when a criterion chose it;
    # printed and recorded wherever the layer is (see :meth:`layer_label`)
    fallback: str | None = None

    def __post_init__(self) -> None:
        if self.raw.ndim != 2 or self.raw.shape[0] != len(self.layers):
            raise DirectionError(f"a direction needs one vector per layer: {len(self.layers)} layers, "
                                 f"tensor of shape {tuple(self.raw.shape)}")
        if "best_layer" not in self.meta and self.fallback is None:
            self.fallback = "no layer was chosen for it: the middle layer"

    def choose_layer(self, layer: int, how: str) -> None:
        """Record ``layer`` as the best layer, chosen by the criterion ``how``."""
        self.meta.update(best_layer=layer, selection=how)
        self.fallback = None

    def layer_label(self) -> str:
        """``"2"``, or ``"2 (fallback: ...)"`` when no criterion chose it."""
        return f"{self.best_layer}" + (f" (fallback: {self.fallback})" if self.fallback else "")

    def check_values(self, where: str = "the direction") -> None:
        """Refuse vectors that would silently do the wrong thing: NaN or infinite values (sampling
        would crash in the middle of a run), or all zeros (ablating it would change nothing)."""
        bad = [lay for lay, ok in zip(self.layers, torch.isfinite(self.raw).all(-1).tolist(), strict=True) if not ok]
        if bad or not bool(torch.isfinite(self.resid_norm).all()):
            raise DirectionError(f"{where} holds NaN or infinite values (layer(s) {bad or self.layers}); extract "
                                 f"it again (python -m emi.extract) from a store that is not damaged")
        zero = [lay for lay, n in zip(self.layers, self.norms.tolist(), strict=True) if n == 0]
        if zero:
            raise DirectionError(f"{where} is all zeros at layer(s) {zero}, so ablating or steering along it "
                                 f"would change nothing; extract it again, or pass another --direction")

    @property
    def d_model(self) -> int:
        return int(self.raw.shape[1])

    @property
    def norms(self) -> Float[torch.Tensor, " layer"]:
        return self.raw.float().norm(dim=-1)

    @property
    def unit(self) -> Float[torch.Tensor, "layer d_model"]:
        return self.raw.float() / self.norms.clamp_min(1e-12)[:, None]

    @property
    def best_layer(self) -> int:
        return int(self.meta.get("best_layer", self.layers[len(self.layers) // 2]))

    def at(self, layer: int, unit: bool = True) -> Float[torch.Tensor, " d_model"]:
        if layer not in self.layers:
            raise DirectionError(f"the direction has no vector for layer {layer}; it has layers {self.layers}")
        i = self.layers.index(layer)
        return (self.unit if unit else self.raw.float())[i]

    def summary(self) -> dict[str, Any]:
        """Provenance for result files: method, layers, best layer, how it was chosen, the hash."""
        keys = ("method", "positions", "selection", "extract_questions", "pair", "store")
        return {"fingerprint": self.fingerprint(), "layers": self.layers, "best_layer": self.best_layer,
                "best_layer_fallback": self.fallback, **{k: self.meta.get(k) for k in keys if k in self.meta}}

    def fingerprint(self) -> str:
        """A hash of the vectors and their layers: which direction an intervention used."""
        h = hashlib.sha256(json.dumps(self.layers).encode())
        h.update(self.raw.float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def norm_at(self, layer: int) -> float:
        return float(self.resid_norm[self.layers.index(layer)])

    def check_fits(self, d_model: int, n_layers: int | None = None, what: str = "the model") -> None:
        if d_model != self.d_model:
            raise DirectionError(f"the direction has width {self.d_model} but {what} has d_model {d_model}; "
                                 f"it was extracted from another model ({self.meta.get('models', '?')})")
        if n_layers is not None and max(self.layers) >= n_layers:
            raise DirectionError(f"the direction has layer {max(self.layers)} but {what} has {n_layers} layers")

    def save(self, path: str | Path) -> Path:
        """``<path>.safetensors`` plus ``<path>.json`` (spec and provenance); atomic."""
        path = Path(path)
        base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
        base.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "layers": self.layers, "d_model": self.d_model, "format": "emi.direction/1",
                "best_layer": self.best_layer, "best_layer_fallback": self.fallback}
        tensors = {"raw": self.raw.float().contiguous(), "resid_norm": self.resid_norm.float().contiguous(),
                   "unit": self.unit.contiguous(), "layers": torch.tensor(self.layers)}
        st = base.with_suffix(".safetensors")
        write_atomic(st, lambda tmp: save_file(tensors, str(tmp), metadata={"emi": dumps(meta)}))
        write_json(base.with_suffix(".json"), meta)
        return st

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        path = Path(path)
        if path.suffix not in ("", ".safetensors", ".json"):
            raise DirectionError(f"{str(path)!r} is not an emi direction file (those end in .safetensors, with a "
                                 f".json beside them); make one with `python -m emi.extract`")
        st = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
        if not st.is_file():
            raise DirectionError(f"no direction file at {str(st)!r}; make one with `python -m emi.extract`")
        try:
            with safe_open(str(st), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("emi", "{}"))
                raw, norm, layers = fh.get_tensor("raw"), fh.get_tensor("resid_norm"), fh.get_tensor("layers")
        except Exception as exc:
            raise DirectionError(f"{str(st)!r} is not an emi direction file: {exc}") from None
        fallback = meta.pop("best_layer_fallback", None)
        d = cls([int(x) for x in layers], raw, norm, meta, fallback)
        d.check_values(repr(str(st)))
        return d

    def subset(self, layers: Sequence[int]) -> Direction:
        idx = [self.layers.index(layer) for layer in layers]
        return Direction(list(layers), self.raw[idx], self.resid_norm[idx], dict(self.meta), self.fallback)


def random_like(d: Direction, seed: int = 0) -> Direction:
    """A same-norm random direction per layer (the control every intervention should run)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(d.raw.shape, generator=g)
    raw = noise / noise.norm(dim=-1, keepdim=True) * d.norms[:, None]
    return Direction(list(d.layers), raw, d.resid_norm.clone(),
                     {**d.meta, "method": "random", "seed": seed, "source_method": d.meta.get("method")}, d.fallback)


def cosines(d: Direction, others: Sequence[Direction]) -> dict[int, list[float | None]]:
    """Per layer of ``d``: its cosine with each of ``others`` at that layer (None where one lacks it)."""
    return {layer: [float(d.at(layer) @ o.at(layer)) if layer in o.layers else None for o in others]
            for layer in d.layers}


def cosine_matrix(vectors: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, "n n"]:
    u = vectors.float() / vectors.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return u @ u.T


def auroc(pos: np.ndarray | Sequence[float], neg: np.ndarray | Sequence[float]) -> float:
    """Probability that a positive scores above a negative (ties count half): the Mann-Whitney U
    of the positives over n_pos * n_neg (scipy's)."""
    from scipy.stats import mannwhitneyu

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(mannwhitneyu(pos, neg, method="asymptotic").statistic / (len(pos) * len(neg)))


def cohens_d(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float:
    p, n = np.asarray(pos, float), np.asarray(neg, float)
    if len(p) < 2 or len(n) < 2:
        return float("nan")
    pooled = np.sqrt(((len(p) - 1) * p.var(ddof=1) + (len(n) - 1) * n.var(ddof=1)) / (len(p) + len(n) - 2))
    return float((p.mean() - n.mean()) / pooled) if pooled > 0 else float("nan")


# ---------------------------------------------------------------- labelling texts and rows

def text_classes(texts: Sequence[Mapping[str, Any]], method: str, t: Thresholds,
                 conditions: tuple[str, str] = ("evil", "helpful")) -> np.ndarray:
    """Per text: +1 (the misaligned class), -1 (the aligned class), 0 (unused)."""
    out = np.zeros(len(texts), dtype=np.int8)
    for i, r in enumerate(texts):
        if method == "mean-diff":
            if "aligned" not in r:
                raise ConfigError("method mean-diff needs judged texts (aligned/coherent scores); capture "
                                  "answers with a judge (python -m emi.cache --judge ...)")
            out[i] = 1 if is_misaligned(r, t) else (-1 if is_aligned(r, t) else 0)
        elif method == "contrast":
            cond = r.get("condition")
            if cond is None:
                raise ConfigError("method contrast needs texts with a 'condition' field (python -m emi.cache --contrast)")
            judged = "aligned" in r
            if cond == conditions[0] and (not judged or is_misaligned(r, t)):
                out[i] = 1
            elif cond == conditions[1] and (not judged or is_aligned(r, t)):
                out[i] = -1
        else:
            out[i] = 1
    return out


def holdout_mask(texts: Sequence[Mapping[str, Any]], fraction: float, seed: int) -> np.ndarray:
    """True for held-out texts, chosen by a seeded hash of each text's *prompt* (its question key),
    stable across runs. Every sample, copy and condition of one prompt falls on the same side, so
    held-out separation is measured on prompts extraction never saw. Texts without a question
    key are split one by one."""
    def h(i: int, r: Mapping[str, Any]) -> float:
        ident = r.get("key", r.get("id"))
        key = f"{seed}|{ident}" if ident is not None else f"{seed}|#{i}"
        return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return np.array([h(i, r) < fraction for i, r in enumerate(texts)])


def row_selector(rows: dict[str, torch.Tensor], positions: str, store_positions: str) -> torch.Tensor:
    """Boolean mask of store rows at the requested positions."""
    if positions == "all":
        return torch.ones_like(rows["pos"], dtype=torch.bool)
    if positions == "response":
        if store_positions in ("last_prompt", "prompt", "thought"):
            fix = "thought" if store_positions == "thought" else "last_prompt"
            raise ConfigError(f"the store holds {store_positions} positions only, no answer tokens; extract with "
                              f"--positions {fix}, or capture answers with --positions response")
        return rows["response"] == 1
    if positions == "last_prompt":
        if store_positions == "last_prompt":
            return torch.ones_like(rows["pos"], dtype=torch.bool)
        if store_positions not in ("all", "prompt"):
            raise ConfigError(f"positions 'last_prompt' need a store captured with --positions last_prompt, "
                              f"prompt or all (this one: {store_positions})")
        text, pos = rows["text"].long(), rows["pos"].long()
        if not len(text):
            return torch.zeros(0, dtype=torch.bool)
        n, never = int(text.max()) + 1, int(pos.max()) + 2
        resp = rows["response"] != 0  # the first token the model wrote: its thought's, else its answer's
        first = torch.full((n,), never).scatter_reduce(0, text[resp], pos[resp], "amin")
        # a text with no such row (a prompt store; an empty answer): its last prompt row, or (an all store)
        # the one before its end-of-turn token
        last = torch.full((n,), -1).scatter_reduce(0, text, pos, "amax")
        before_end = 0 if store_positions == "prompt" else 1
        want = torch.where(first < never, first - 1, last - before_end)
        return pos == want[text]
    if positions == "thought":
        if store_positions not in ("thought", "all"):
            raise ConfigError(f"positions 'thought' need a store captured with --positions thought or all, from "
                              f"answers sampled with --thinking on (this one: {store_positions})")
        sel = rows["response"] == 2
        if not bool(sel.any()):
            raise ConfigError("the store holds no thought's rows (row.response 2): its answers were sampled without "
                              "thinking, or it was captured before emi captured thoughts; capture answers sampled "
                              "with --thinking on again (python -m emi.cache ... --overwrite)")
        return sel
    raise ConfigError(f"unknown positions {positions!r}; expected one of {', '.join(DIR_POSITIONS)}")


# ---------------------------------------------------------------- extraction

@dataclass
class LayerReport:
    layer: int
    n_pos: int
    n_neg: int
    norm: float
    resid_norm: float
    auroc: float  # held-out texts, projection on this layer's direction
    effect_size: float
    random_auroc: float


@dataclass
class Extraction:
    direction: Direction
    reports: list[LayerReport]


def _text_scores(store: Store, role: str, layer: int, sel: torch.Tensor, text_idx: torch.Tensor,
                 vecs: torch.Tensor, n_texts: int) -> np.ndarray:
    """Mean projection of each text's selected rows on each of ``vecs`` [k, d_model], in one pass
    over the store: an array [k, n_texts] (nan for texts with no selected rows)."""
    sums = torch.zeros(len(vecs), n_texts, dtype=torch.float64)
    counts = torch.zeros(n_texts, dtype=torch.float64)
    start = 0
    for acts, _meta in store.iter_shards(role, layer):
        n = len(acts)
        m = sel[start: start + n]
        idx = text_idx[start: start + n][m]
        proj = acts[m].double() @ vecs.double().T  # [rows, k]
        sums.index_add_(1, idx, proj.T)
        counts.index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
        start += n
    out = (sums / counts).numpy()
    out[:, counts.numpy() == 0] = np.nan
    return out


def extract(store: Store, method: str = "mean-diff", positions: str = "response", role: str | None = None,
            layers: Sequence[int] | None = None, thresholds: Thresholds = Thresholds(), holdout: float = 0.2,
            seed: int = 0, min_count: int = 5, conditions: tuple[str, str] = ("evil", "helpful")) -> Extraction:
    """Streaming per-layer mean difference over a store, with held-out separation per layer."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0 <= holdout < 1:
        raise ConfigError(f"holdout must be in [0, 1), found {holdout}")
    texts = store.texts()
    rows = store.rows()
    sel = row_selector(rows, positions, store.spec["positions"])
    text_idx = rows["text"].long()
    cls = torch.from_numpy(text_classes(texts, method, thresholds, conditions).astype(np.int64))
    held = torch.from_numpy(holdout_mask(texts, holdout, seed))
    if method == "model-diff":
        if not {"base", "finetuned"} <= set(store.roles):
            raise ConfigError(f"method model-diff needs a store with base and finetuned models (it has {store.roles})")
        pos_role, neg_role = "finetuned", "base"
    else:
        role = role or ("finetuned" if "finetuned" in store.roles else store.roles[0])
        pos_role = neg_role = role
    row_cls = cls[text_idx]
    train_rows = sel & ~held[text_idx]
    pos_rows = train_rows & (row_cls == 1)
    neg_rows = train_rows & (row_cls == -1) if method != "model-diff" else pos_rows
    n_pos_t = int(((cls == 1) & ~held).sum())
    n_neg_t = int(((cls == -1) & ~held).sum()) if method != "model-diff" else n_pos_t
    if n_pos_t < min_count or n_neg_t < min_count or int(pos_rows.sum()) == 0 or int(neg_rows.sum()) == 0:
        names = {"mean-diff": ("misaligned", "aligned"), "contrast": conditions, "model-diff": ("texts", "texts")}[method]
        raise ConfigError(
            f"too few answers to extract a direction: {n_pos_t} {names[0]} and {n_neg_t} {names[1]} training texts "
            f"(need at least {min_count} each, after holding out {holdout:.0%}); sample more answers (--n), "
            f"or relax the thresholds")
    layer_list = list(layers) if layers is not None else store.layers
    raws, norms, reports = [], [], []
    for layer in layer_list:
        sums = {k: torch.zeros(store.d_model, dtype=torch.float64) for k in ("pos", "neg")}
        counts = {"pos": 0, "neg": 0}
        norm_sum, norm_n = 0.0, 0
        classes = (("pos", pos_role, pos_rows), ("neg", neg_role, neg_rows))
        for role_ in dict.fromkeys((pos_role, neg_role)):  # each role's shards read once
            start = 0
            for acts, _m in store.iter_shards(role_, layer):
                rows_ = slice(start, start + len(acts))
                for which, r, mask in classes:
                    if r == role_:
                        a = acts[mask[rows_]].double()
                        sums[which] += a.sum(0)
                        counts[which] += len(a)
                norm_sum += float(acts[sel[rows_]].double().norm(dim=-1).sum())
                norm_n += int(sel[rows_].sum())
                start += len(acts)
        raw = (sums["pos"] / counts["pos"] - sums["neg"] / counts["neg"]).float()
        raws.append(raw)
        norms.append(norm_sum / max(1, norm_n))
        reports.append(_separation(store, pos_role, layer, sel, text_idx, raw, cls, held, len(texts), seed,
                                   counts["pos"], counts["neg"], norms[-1], method))
    meta = {"method": method, "positions": positions, "role": pos_role if method != "model-diff" else "finetuned-base",
            "thresholds": vars(thresholds), "holdout": holdout, "seed": seed,
            "counts": {"pos_texts": n_pos_t, "neg_texts": n_neg_t}, "store": str(store.path),
            "models": store.manifest.get("provenance", {}).get("models", {}),
            "conditions": list(conditions) if method == "contrast" else None,
            "layer_convention": "residual stream after decoder block l"}
    valid = [r for r in reports if np.isfinite(r.auroc)]
    meta["best_layer"] = max(valid, key=lambda r: r.auroc).layer if valid else layer_list[len(layer_list) // 2]
    meta["selection"] = "highest held-out AUROC" if valid else None
    meta["separation"] = [vars(r) for r in reports]
    fallback = None if valid else (f"the middle layer: held-out AUROC is undefined at every layer (too few "
                                   f"{'labelled ' if method != 'model-diff' else ''}held-out answers"
                                   f"{'; model-diff has no labels' if method == 'model-diff' else ''})")
    d = Direction(layer_list, torch.stack(raws), torch.tensor(norms), meta, fallback)
    return Extraction(d, reports)


def _separation(store: Store, role: str, layer: int, sel: torch.Tensor, text_idx: torch.Tensor, raw: torch.Tensor,
                cls: torch.Tensor, held: torch.Tensor, n_texts: int, seed: int, n_pos: int, n_neg: int,
                resid_norm: float, method: str) -> LayerReport:
    """How well the projection separates misaligned from aligned held-out texts (judge labels)."""
    texts_ok = held & (cls != 0) if held.any() else cls != 0
    unit = raw / raw.norm().clamp_min(1e-12)
    g = torch.Generator().manual_seed(seed + 1000 + layer)
    rnd = torch.randn(raw.shape, generator=g)
    rnd = rnd / rnd.norm()
    if method == "model-diff":  # no labels of its own: report nothing
        return LayerReport(layer, n_pos, n_neg, float(raw.norm()), resid_norm, float("nan"), float("nan"), float("nan"))
    scores, rscores = _text_scores(store, role, layer, sel, text_idx, torch.stack([unit, rnd]), n_texts)
    ok = texts_ok.numpy() & np.isfinite(scores)
    c = cls.numpy()
    pos, neg = scores[ok & (c == 1)], scores[ok & (c == -1)]
    return LayerReport(layer, n_pos, n_neg, float(raw.norm()), resid_norm, auroc(pos, neg), cohens_d(pos, neg),
                       auroc(rscores[ok & (c == 1)], rscores[ok & (c == -1)]))


def project(acts: Float[torch.Tensor, "*rows d_model"], d: Direction, layer: int) -> Float[torch.Tensor, "*rows"]:
    """The monitor: projection of activations [..., d_model] on the unit direction at ``layer``."""
    d.check_fits(acts.shape[-1])
    return acts.float() @ d.at(layer)


def check_fits_pair(path: str, plan: PairPlan, what: str | None = None) -> None:
    """A direction file fits a planned pair's base (width, depth), read from the file and the base's
    config before any weights load (emi.models.plan); one sentence when it does not."""
    if plan.d_model is not None:
        Direction.load(path).check_fits(plan.d_model, plan.n_layers, what or f"pair {plan.spec.name!r}")
