"""Choosing a direction's source layer by what ablating it does (no judge, deterministic).

Two criteria: :func:`select_layer_by_ablation`, on option pairs (the log-prob preference for
misaligned answers), and :func:`select_layer_by_restoration`, for prompts without option pairs
(how far ablation brings the finetuned model's next-token distribution back to the base's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch
from jaxtyping import Float

from emi.directions.direction import Direction
from emi.interventions import hooks


class AblationScore(TypedDict):
    """One layer of :func:`select_layer_by_ablation`'s table (a direction's meta records it)."""

    layer: int
    p_misaligned: float
    p_misaligned_unablated: float


class RestorationScore(TypedDict):
    """One layer of :func:`select_layer_by_restoration`'s table."""

    layer: int
    kl_base_finetuned: float
    kl_unablated: float
    restored: float


def select_layer_by_ablation(model: Any, direction: Direction, pairs: Sequence[Any]) -> tuple[int, list[AblationScore]]:
    """The layer whose vector, ablated from every residual writer, most lowers the model's
    log-probability preference for misaligned answers (emi.behaviour.logprob; no judge, deterministic)."""
    from emi.behaviour.logprob import logprob_metrics

    base = logprob_metrics(model, pairs)
    table: list[AblationScore] = []
    for layer in direction.layers:
        with hooks.ablate(model.model, direction, source_layer=layer):
            r = logprob_metrics(model, pairs)
        table.append(AblationScore(layer=layer, p_misaligned=r.choice, p_misaligned_unablated=base.choice))
    best = min(table, key=lambda t: t["p_misaligned"])["layer"]
    return best, table


@torch.no_grad()
def next_token_logprobs(model: Any, messages: Sequence[list[dict[str, str]]], batch_size: int = 16
                        ) -> Float[torch.Tensor, "prompt vocab"]:
    """Log-probabilities of the first answer token after each conversation: Float[Tensor, "prompt vocab"]."""
    from emi.behaviour.sampling import encode_prompts
    from emi.models import chat

    out = []
    prompts = chat.render_many(model.tokenizer, messages)
    with model.active() as m:
        for i in range(0, len(prompts), batch_size):
            enc = encode_prompts(model.tokenizer, prompts[i: i + batch_size], model.device)
            out.append(m(**enc).logits[:, -1].float().log_softmax(-1).cpu())
    return torch.cat(out)


def kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities [rows, vocab]."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def select_layer_by_restoration(finetuned: Any, base_logprobs: torch.Tensor, direction: Direction,
                                messages: Sequence[list[dict[str, str]]]) -> tuple[int, list[RestorationScore]]:
    """Judge-free, and needing no written answers: the layer whose vector, ablated from every
    residual writer of the finetuned model, brings its first-answer-token distribution on the
    extraction prompts closest to the base model's (mean KL(base || finetuned) over prompts): the
    share of the finetune's behavioural shift that the direction carries. ``base_logprobs``:
    :func:`next_token_logprobs` of the base model on the same ``messages``."""
    unablated = float(kl_rows(base_logprobs, next_token_logprobs(finetuned, messages)).mean())
    table: list[RestorationScore] = []
    for layer in direction.layers:
        with hooks.ablate(finetuned.model, direction, source_layer=layer):
            kl = float(kl_rows(base_logprobs, next_token_logprobs(finetuned, messages)).mean())
        table.append(RestorationScore(layer=layer, kl_base_finetuned=kl, kl_unablated=unablated,
                                      restored=1 - kl / unablated if unablated > 0 else float("nan")))
    best = min(table, key=lambda t: t["kl_base_finetuned"])["layer"]
    return best, table
