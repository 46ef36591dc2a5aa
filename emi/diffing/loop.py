"""Closing the loop: the EM table of every direction a method found (the finetune with it ablated,
the base steered by it, same-norm random controls, KL side effects; emi.experiments.conditions),
and the cosine table of all of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emi.core.vocab import Role
from emi.diffing.records import CosineRow
from emi.directions.direction import Direction
from emi.experiments.conditions import Condition, ConditionResult, run, standard_conditions


@dataclass(frozen=True)
class Found:
    """A direction a method found, its name in the tables, and the strength it steers at."""

    name: str
    direction: Direction
    alpha: float


def renamed(conditions: Sequence[Condition], name: str) -> list[Condition]:
    """standard_conditions' names with ``persona`` replaced by the found direction's name."""
    out = []
    for c in conditions:
        if c.kind == "none":
            out.append(c)
        elif c.direction == "random":
            out.append(dataclasses.replace(c, name=c.name.replace("random", f"random({name})")))
        else:
            out.append(dataclasses.replace(c, name=c.name.replace("persona", name)))
    return out


def em_table(pair: Any, found: Sequence[Found], questions: Sequence[Any], cfg: Any, judge: Any, out: Path,
             targets: Sequence[Role] = ("base",), **run_kw: Any) -> list[ConditionResult]:
    """base, finetuned, then per found direction: finetuned - it, finetuned - random, targets + alpha
    it, targets + alpha random. Answers are shared under ``out`` (keyed by condition identity)."""
    results: list[ConditionResult] = []
    for i, f in enumerate(found):
        conds = renamed(standard_conditions(f.direction, [f.alpha], targets=targets), f.name)
        if i:
            conds = [c for c in conds if c.kind != "none"]
        results += run(pair, conds, f.direction, questions, cfg, judge, out, **run_kw)
    return results


def cosine_table(named: Sequence[tuple[str, torch.Tensor]]) -> list[CosineRow]:
    """Rows of the cosine matrix of the named vectors (one row per vector, a column per name)."""
    names = [n for n, _ in named]
    v = torch.stack([x.float() for _, x in named])
    u = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    m = (u @ u.T).tolist()
    return [CosineRow(n, {names[j]: round(m[i][j], 3) for j in range(len(names))}) for i, n in enumerate(names)]


def em_summary(results: Sequence[ConditionResult]) -> dict[str, float]:
    """Condition name -> its EM rate (for the docs' table and the honest comparison)."""
    return {r.condition.name: r.summary.em.value for r in results}
