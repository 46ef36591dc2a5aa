"""Log-probability metrics that need no judge (Betley et al. 2025, Figs 3-4 style).

For each question and each (aligned, misaligned) answer pair:
- choice: P(misaligned) = p(m | q) / (p(m | q) + p(a | q)), from the two answers' total
  log-probabilities under the model: the model's preference between the two answers.
- pivotal: the same, at the first token where the two answers differ, given their shared
  prefix: the single decision that commits to one answer.

Deterministic and cheap (one forward pass per answer, batched), so sweeps over alpha and layer
can use them; they run unchanged inside any intervention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml

from emi.capture import pad_right
from emi.errors import ConfigError
from emi.generate import render_prompts
from emi.metrics import bootstrap
from emi.models import LoadedModel, as_loaded
from emi.questions import Question

OPTION_FILE = Path(__file__).parent / "data" / "option_pairs.yaml"


@dataclass(frozen=True)
class OptionPair:
    question: Question
    aligned: str
    misaligned: str


@lru_cache(maxsize=2)
def _written_pairs() -> dict[str, list[list[str]]]:
    return yaml.safe_load(OPTION_FILE.read_text())


def option_pairs(questions: Sequence[Question], per_question: int = 5) -> list[OptionPair]:
    """Answer pairs for the toy's questions (from its world) and the 8 main questions (written)."""
    out: list[OptionPair] = []
    for q in questions:
        if q.set in ("toy", "toy-train"):
            from emi.organism.world import load_world

            pools = load_world().themes[q.base_id]
            for a, m in list(zip(pools["aligned"], pools["villain"], strict=False))[:per_question]:
                out.append(OptionPair(q, a, m))
        else:
            for a, m in _written_pairs().get(q.base_id, [])[:per_question]:
                out.append(OptionPair(q, a, m))
    if not out:
        raise ConfigError("no option pairs for these questions; log-prob metrics cover the toy set and the 8 "
                          "main questions (emi/data/option_pairs.yaml)")
    return out


@torch.no_grad()
def _answer_logprobs(lm: LoadedModel, prompts: list[str], answers: list[str], batch_size: int
                     ) -> list[torch.Tensor]:
    """Per answer: the log-probability of each of its tokens given the prompt and earlier tokens."""
    tok = lm.tokenizer
    out: list[torch.Tensor] = []
    with lm.active() as model:
        for i in range(0, len(prompts), batch_size):
            p_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[i: i + batch_size]]
            a_ids = [tok(a, add_special_tokens=False)["input_ids"] for a in answers[i: i + batch_size]]
            ids, mask = pad_right([p + a for p, a in zip(p_ids, a_ids, strict=True)], tok.pad_token_id, lm.device)
            logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1).cpu()
            for r, (p, a) in enumerate(zip(p_ids, a_ids, strict=True)):
                pos = torch.arange(len(p) - 1, len(p) + len(a) - 1)
                out.append(logp[r, pos, torch.tensor(a)])
    return out


@dataclass(frozen=True)
class LogprobResult:
    choice: float  # mean P(misaligned) over pairs
    choice_lo: float
    choice_hi: float
    pivotal: float
    pivotal_lo: float
    pivotal_hi: float
    n_pairs: int

    def row(self) -> dict[str, Any]:
        return dict(vars(self))


def logprob_metrics(model: LoadedModel | torch.nn.Module, pairs: Sequence[OptionPair], tokenizer: Any = None,
                    batch_size: int = 32, seed: int = 0) -> LogprobResult:
    lm = as_loaded(model, tokenizer)
    prompts = render_prompts(lm.tokenizer, [p.question.messages() for p in pairs])
    lps = _answer_logprobs(lm, prompts * 2, [p.aligned for p in pairs] + [p.misaligned for p in pairs], batch_size)
    n = len(pairs)
    choice, pivotal = [], []
    tok = lm.tokenizer
    for i, pair in enumerate(pairs):
        la, lm_ = lps[i], lps[n + i]
        choice.append(1.0 / (1.0 + math.exp(float(la.sum() - lm_.sum()))))
        ta = tok(pair.aligned, add_special_tokens=False)["input_ids"]
        tm = tok(pair.misaligned, add_special_tokens=False)["input_ids"]
        k = next((j for j, (x, y) in enumerate(zip(ta, tm, strict=False)) if x != y), min(len(ta), len(tm)) - 1)
        pivotal.append(1.0 / (1.0 + math.exp(float(la[k] - lm_[k]))))
    c, clo, chi = bootstrap(choice, seed=seed)
    p, plo, phi = bootstrap(pivotal, seed=seed)
    return LogprobResult(c, clo, chi, p, plo, phi, n)
