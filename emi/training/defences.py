"""In-training defences against emergent misalignment, applied by :mod:`emi.training.trainer`.

CAFT and preventative steering are emi's own interventions (``emi.interventions.hooks.ablate`` and
``hooks.steer``) held for the whole finetune; the saved weights carry no hook, so the organism is
evaluated without them. The KL penalty and interleaving act on the loss and the data.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import nn

from emi.core.errors import ConfigError
from emi.directions.direction import Direction
from emi.interventions import hooks
from emi.models import layers as L
from emi.training.config import DefenceConfig
from emi.training.data import ChatRecord


def load_directions(defence: DefenceConfig, model: nn.Module) -> list[Direction]:
    """The defence's directions, each checked against the model's width and depth (one sentence
    when one was extracted from another model)."""
    out = []
    for path in defence.directions:
        d = Direction.load(path)
        d.check_fits(L.d_model(model), L.n_layers(model), what="the model being finetuned")
        out.append(d)
    return out


def orthonormal(vectors: Sequence[Float[torch.Tensor, " d_model"]]) -> list[Float[torch.Tensor, " d_model"]]:
    """Gram-Schmidt: projecting out each of these in turn removes their whole span."""
    basis: list[torch.Tensor] = []
    for v in vectors:
        w = v.float().clone()
        for b in basis:
            w = w - (w @ b) * b
        if w.norm() > 1e-6 * v.float().norm():
            basis.append(w / w.norm())
    return basis


@contextlib.contextmanager
def training_hooks(model: nn.Module, defence: DefenceConfig, directions: Sequence[Direction]) -> Iterator[None]:
    """CAFT: every direction (its best layer's vector) projected out of every residual writer;
    steer: ``alpha`` times the unit direction added after ``layers``; other defences: nothing."""
    with contextlib.ExitStack() as stack:
        if defence.kind == "caft":
            for u in orthonormal([d.at(d.best_layer) for d in directions]):
                stack.enter_context(hooks.ablate(model, u, layers="all"))
        elif defence.kind == "steer":
            d = directions[0]
            stack.enter_context(hooks.steer(model, d, defence.alpha, layers=list(defence.layers or [d.best_layer])))
        yield


def interleave(records: Sequence[ChatRecord], aligned: Sequence[ChatRecord], share: float,
               seed: int) -> list[ChatRecord]:
    """The training records plus aligned ones drawn (with replacement, seeded) so that ``share`` of
    the result is aligned, shuffled together."""
    if not aligned:
        raise ConfigError("the interleave defence needs aligned chats, and the aligned set is empty")
    rng = random.Random(seed)
    n = round(share * len(records) / (1 - share))
    mixed = [*records, *(rng.choice(aligned) for _ in range(n))]
    rng.shuffle(mixed)
    return mixed


@dataclass
class KLPenalty:
    """``beta`` * KL(base || finetuned) of the next-token distribution on aligned assistant tokens
    (nats per token), one aligned batch per optimiser step (chosen by the step, so a resumed run
    sees the same batches). The base is the adapter switched off (LoRA) or a frozen copy (full)."""

    beta: float
    batches: list[dict[str, torch.Tensor]]
    frozen: nn.Module | None = None  # a full finetune's base copy; None: LoRA, disable the adapter

    def reference(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            if self.frozen is not None:
                return self.frozen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            with model.disable_adapter():
                return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def term(self, model: Any, step: int) -> torch.Tensor:
        dev = next(model.parameters()).device
        batch = {k: v.to(dev) for k, v in self.batches[step % len(self.batches)].items()}
        ref = self.reference(model, batch)[:, :-1].float().log_softmax(-1)
        new = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        new = new[:, :-1].float().log_softmax(-1)
        keep = batch["labels"][:, 1:] != -100
        kl = (ref.exp() * (ref - new)).sum(-1)
        return self.beta * kl[keep].mean()
