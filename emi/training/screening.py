"""Screening a training set before finetuning on it: rank its examples by their projection on the
persona direction, and say how well that flags the harmful ones where labels exist.

Persona vectors (Chen et al. 2025) found that the projection of training samples on a persona
vector flags the data that will induce the trait. An example's score here is the mean, over its
assistant tokens, of the residual activation after block ``layer`` projected on the direction's unit
vector at that layer (the model reads the chat as it will be trained on it). The direction may be
finetuned-minus-base (``model-diff``) or extracted from samples (``mean-diff``); any emi direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from emi.activations.readers import hf_reader
from emi.directions.direction import Direction, auroc
from emi.models.chat import pad_right
from emi.models.loading import LoadedModel
from emi.training.data import ChatRecord, encode


@torch.no_grad()
def projections(lm: LoadedModel, records: Sequence[ChatRecord], direction: Direction, layer: int | None = None,
                max_len: int = 1024, batch_size: int = 16) -> Float[np.ndarray, " example"]:
    """Per example: mean over its assistant tokens of <h_layer, unit direction>."""
    layer = direction.best_layer if layer is None else layer
    direction.check_fits(lm.d_model, lm.n_layers, what=f"the model {lm.spec.label()!r}")
    u = direction.at(layer).float()
    tok = lm.tokenizer
    encoded = [encode(tok, r.chat(), max_len) for r in records]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[float] = []
    with lm.active() as model:
        read = hf_reader(model, [layer])
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i: i + batch_size]
            ids, mask = pad_right([e.input_ids for e in chunk], pad, lm.device)
            h = read(ids, mask)[("resid", layer)].float().cpu() @ u
            for row, e in enumerate(chunk):
                keep = torch.tensor(e.assistant, dtype=torch.bool)
                out.append(float(h[row, : len(e.assistant)][keep].mean()) if keep.any() else float("nan"))
    return np.asarray(out)


@dataclass(frozen=True)
class Screen:
    """Scores of a dataset's examples and, where labels exist, how well they flag the harmful ones."""

    scores: Float[np.ndarray, " example"]
    labels: tuple[bool | None, ...]
    auroc: float  # P(a harmful example scores above a harmless one); nan without both kinds of label
    n_harmful: int
    n_harmless: int
    precision_at_k: float  # share of harmful among the top-k, k = the number of harmful examples

    def ranking(self) -> list[int]:
        """Example indices, highest projection first (nan last)."""
        s = np.nan_to_num(self.scores, nan=-np.inf)
        return [int(i) for i in np.argsort(-s, kind="stable")]

    def row(self) -> dict[str, Any]:
        return {"auroc": self.auroc, "n_harmful": self.n_harmful, "n_harmless": self.n_harmless,
                "precision_at_k": self.precision_at_k, "n": len(self.scores)}


def screen(scores: Float[np.ndarray, " example"], labels: Sequence[bool | None]) -> Screen:
    pos = [float(s) for s, y in zip(scores, labels, strict=True) if y is True and s == s]
    neg = [float(s) for s, y in zip(scores, labels, strict=True) if y is False and s == s]
    order = [i for i in np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable") if labels[i] is not None]
    k = len(pos)
    top = order[:k]
    prec = float(np.mean([labels[i] is True for i in top])) if k and neg else float("nan")
    return Screen(np.asarray(scores), tuple(labels), auroc(pos, neg), len(pos), len(neg), prec)
