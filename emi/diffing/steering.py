"""The largest coherent steering strength of a direction: a bounded bisection over the strength,
each step judged by emi's judge on a few questions (Minder et al.'s search: 10 steps, coherence
threshold 75 on the judge's 0-100 scale), sampled in-process (emi's hooks) or on an engine that
serves steering (``--engine vllm``: vllm-lens adds the same vector after the layer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from emi.behaviour.questions import Question
from emi.behaviour.sampling import SamplingConfig
from emi.core.vocab import EngineName
from emi.diffing.records import SearchStep
from emi.directions.direction import Direction
from emi.engines.base import Backend, Bound
from emi.engines.served import Served, Steering
from emi.engines.served import plain as served_plain
from emi.interventions import hooks
from emi.judging.evaluation import evaluate
from emi.judging.judges import Judge
from emi.models.loading import LoadedModel


@dataclass(frozen=True)
class SearchConfig:
    threshold: float = 75.0  # the lowest mean coherence (0-100) a strength may have
    max_strength: float = 2.0  # the bracket's top, in units of the typical residual norm at the layer
    steps: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 100 or self.max_strength <= 0 or self.steps < 1:
            raise ValueError("SearchConfig: threshold in [0, 100], max_strength > 0, steps >= 1")


def coherent_strength(lm: LoadedModel, d: Direction, questions: Sequence[Question], cfg: SamplingConfig,
                      judge: Judge, out: Path, search: SearchConfig, progress: bool = False,
                      engine: Backend | None = None) -> tuple[float, list[SearchStep]]:
    """The largest strength (absolute residual units) in [0, max_strength * norm] at which ``lm``
    steered by ``d`` stays coherent, and each step tried (with the engine that sampled it).
    ``engine``: sample the steps there when it serves steering (else in-process). Answers are cached
    under ``out``, so a re-run resumes."""
    layer = d.best_layer
    hi = search.max_strength * d.norm_at(layer)
    lo, trace = 0.0, list[SearchStep]()
    for _ in range(search.steps):
        mid = (lo + hi) / 2
        ident: dict[str, object] = {"model": lm.identity(), "intervention": {
            "kind": "steer", "alpha": mid, "layers": [layer], "direction": d.fingerprint(), "search": True}}
        bound = _bound(engine, lm, d, layer, mid)
        if bound is not None:
            ident = {**ident, "engine": bound.engine.describe(), "served": bound.served.key()}
        with hooks.steer(lm.model, d, mid, layers=[layer]) if bound is None else hooks.nothing():
            summary, _ = evaluate(lm, questions, cfg, judge, out, label=f"search {mid:.3g}", progress=progress,
                                  identity=ident, engine=bound)
        ok = summary.mean_coherent == summary.mean_coherent and summary.mean_coherent >= search.threshold
        trace.append(SearchStep(strength=mid, mean_coherent=summary.mean_coherent, coherent=ok,
                                engine=cast(EngineName, bound.name) if bound is not None else "in-process"))
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo, trace


def _bound(engine: Backend | None, lm: LoadedModel, d: Direction, layer: int, alpha: float) -> Bound | None:
    """``engine`` bound to ``lm`` steered by ``alpha`` times the unit ``d`` after ``layer`` at every
    position, or None where there is no engine or it does not serve that."""
    if engine is None:
        return None
    plain = served_plain(lm)
    served = Served(plain.checkpoint, plain.adapter,
                    steering=Steering((layer,), hooks.steer_delta(d, layer, alpha)[None], "all"))
    if not engine.serves(served):
        return None
    engine.plan([served])
    return Bound(engine, served, lm.tokenizer)
