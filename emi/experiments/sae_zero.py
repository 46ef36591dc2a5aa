"""EM with SAE latents zeroed (Wang et al. 2025 zero persona latents): the finetuned model, the
same with the chosen latents zeroed at one layer, and a control zeroing as many random live latents.
In-process through a forward hook, or on vLLM (``engine``) through the same edit exported as a
torch.export program that a hook in the server runs."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from emi.behaviour.metrics import Summary
from emi.behaviour.questions import Question
from emi.behaviour.sampling import SamplingConfig
from emi.core.errors import ConfigError
from emi.directions.sae import export_edit, sae_edit
from emi.engines.base import Backend, bind
from emi.engines.served import Program, Served, plain
from emi.judging.evaluation import evaluate
from emi.judging.judges import Judge
from emi.models.loading import LoadedModel


def zero_latents(model: LoadedModel, sae: Any, layer: int, latents: Sequence[int], live: Sequence[int],
                 questions: Sequence[Question], cfg: SamplingConfig, judge: Judge, out: Path,
                 where: str, engine: Backend | None = None) -> list[tuple[str, str, Summary]]:
    """(condition, engine, EM summary) for the unmodified model, ``latents`` zeroed, and as many
    random live latents zeroed (drawn with ``cfg.seed``). Answers are resumable under ``out``.
    ``engine`` (vLLM, or a server for the unmodified model) samples each condition it serves (an
    edit only a server emi starts runs: its hook runs emi's program); the rest run in-process."""
    pool = [i for i in live if i not in latents]
    if len(pool) < len(latents):
        raise ConfigError(f"too few live latents ({len(pool)}) for a random control of {len(latents)}")
    control = random.Random(cfg.seed).sample(pool, len(latents))
    results = []
    for name, lat in (("finetuned", []), (f"zero {list(latents)}", list(latents)),
                      (f"zero random live {control}", control)):
        ident: dict[str, Any] = {"model": model.identity(), "sae": where, "layer": layer, "zero": lat}
        base = plain(model)
        served: Served | None = base
        if lat:  # the edit runs where a hook runs emi's program (a server emi starts), else in-process
            edit = Served(base.checkpoint, base.adapter, program=Program(layer, ""))
            served = (replace(edit, program=Program(layer, str(export_edit(sae, out / "served", zero=lat))))
                      if engine is not None and engine.serves(edit) else None)
        bound = bind(engine, model, served)[0] if served is not None else None
        if bound is not None:
            ident = {**ident, "engine": bound.engine.describe(), "served": bound.served.key()}
            s, _ = evaluate(model, questions, cfg, judge, out, label=name, identity=ident, engine=bound)
        else:
            with sae_edit(model.model, sae, layer, zero=lat):
                s, _ = evaluate(model, questions, cfg, judge, out, label=name, identity=ident)
        results.append((name, bound.name if bound else "in-process", s))
    return results
