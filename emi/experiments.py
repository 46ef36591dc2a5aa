"""Steering and ablation experiments: conditions x (judge EM rate, coherence), resumable.

A condition is a model of the pair plus at most one intervention. Every intervention with the
persona direction has a same-norm random-direction control. Results are one tidy table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emi import hooks
from emi.directions import Direction, extract, random_like
from emi.evaluation import evaluate
from emi.generate import SamplingConfig
from emi.judge import Judge
from emi.models import LoadedModel, ModelPair
from emi.questions import Question


@dataclass(frozen=True)
class Condition:
    name: str
    role: str  # base | finetuned | control
    kind: str = "none"  # none | ablate | steer
    alpha: float = 0.0
    layers: tuple[int, ...] = ()
    direction: str = "persona"  # persona | random
    relative: bool = False
    positions: str = "all"


def standard_conditions(direction: Direction, alphas: Sequence[float], layers: Sequence[int] | None = None,
                        relative: bool = False, positions: str = "all", with_control: bool = False,
                        ablate_layers: Sequence[int] | None = None, sweep_layers: bool = False,
                        targets: Sequence[str] = ("base",)) -> list[Condition]:
    """The table the workbench exists for: base, finetuned, finetuned with the direction ablated,
    the targets steered by each alpha, and same-norm random controls of every intervention.

    ``sweep_layers`` steers each of ``layers`` on its own (alpha x layer x target); otherwise all
    of them at once.
    """
    lay = tuple(layers or [direction.best_layer])
    groups = [(x,) for x in lay] if sweep_layers else [lay]
    abl = tuple(ablate_layers or ())
    out = [Condition("base", "base"), Condition("finetuned", "finetuned")]
    if with_control:
        out.append(Condition("control", "control"))
    out += [Condition("finetuned - persona", "finetuned", "ablate", layers=abl),
            Condition("finetuned - random", "finetuned", "ablate", layers=abl, direction="random")]
    for target in targets:
        for group in groups:
            where = f" @L{','.join(map(str, group))}" if sweep_layers else ""
            for a in alphas:
                sign = "+" if a >= 0 else "-"
                for kind in ("persona", "random"):
                    out.append(Condition(f"{target} {sign} {abs(a):g} {kind}{where}", target, "steer", a, group, kind,
                                         relative, positions))
    return out


@contextlib.contextmanager
def applied(c: Condition, model: LoadedModel, persona: Direction, random: Direction) -> Iterator[None]:
    d = persona if c.direction == "persona" else random
    if c.kind == "none":
        yield
    elif c.kind == "ablate":
        with hooks.ablate(model.model, d, layers=list(c.layers) or "all", source_layer=persona.best_layer):
            yield
    elif c.kind == "steer":
        with hooks.steer(model.model, d, c.alpha, layers=list(c.layers), relative=c.relative, positions=c.positions):
            yield
    else:
        raise ValueError(f"unknown intervention {c.kind!r}")


def run(pair: ModelPair, conditions: Sequence[Condition], direction: Direction, questions: Sequence[Question],
        cfg: SamplingConfig, judge: Judge, out: str | Path, random_seed: int = 0,
        progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate every condition (answers and judgements cached under ``out``); tidy rows."""
    from emi.errors import ConfigError
    from emi.logprob import logprob_metrics, option_pairs

    rnd = random_like(direction, seed=random_seed)
    try:
        pairs = option_pairs(questions)
    except ConfigError:
        pairs = []
    rows = []
    for c in conditions:
        model = pair[c.role]
        with applied(c, model, direction, rnd):
            summary, _ = evaluate(model, questions, cfg, judge, out, label=c.name, progress=progress)
            lp = {f"logprob_{k}": v for k, v in logprob_metrics(model, pairs).row().items()} if pairs else {}
        rows.append({"condition": c.name, "model": c.role, "intervention": c.kind, "alpha": c.alpha,
                     "layers": list(c.layers), "direction": c.direction if c.kind != "none" else "",
                     "relative": c.relative, **{k: v for k, v in summary.row().items() if k != "model"}, **lp})
    return rows


def direction_questions(toy: bool) -> list[Question]:
    """Prompts to extract a direction from, disjoint from the evaluation questions."""
    from emi.questions import load_questions

    return load_questions("toy-train" if toy else "preregistered")


def ensure_direction(pair: ModelPair, toy: bool, cache_dir: str | Path, method: str = "model-diff",
                     cfg: SamplingConfig | None = None, judge: Judge | None = None,
                     progress: bool = True) -> Direction:
    """The pair's persona direction, extracted on first use and cached under ``cache_dir``.

    model-diff (default): finetuned minus base at the last prompt token of held-out prompts, i.e.
    how the finetune moved the activation where the model decides which persona to voice.
    contrast: evil minus helpful persona (system prompt, or earlier turns for the toy) at the same
    token. mean-diff: misaligned minus aligned answers of the finetuned model over response tokens
    (the published recipe). The source layer is the one whose ablation most lowers the
    finetuned model's log-prob preference for misaligned answers.
    """
    from emi.capture import capture_models
    from emi.directions import select_layer_by_ablation
    from emi.logprob import option_pairs
    from emi.persona import contrast_items

    cache_dir = Path(cache_dir)
    path = cache_dir / "direction.safetensors"
    if path.is_file():
        return Direction.load(path)
    qs = direction_questions(toy)
    if method == "model-diff":
        items = [{"messages": q.messages() + [{"role": "assistant", "content": ""}], "id": q.id, "key": q.key}
                 for q in qs]
        store = capture_models({"base": pair.base, "finetuned": pair.finetuned}, items, cache_dir / "store", "all",
                               positions="last_prompt", progress=progress, overwrite=True)
        ex = extract(store, "model-diff", "last_prompt", holdout=0.0, min_count=2)
    elif method == "contrast":
        items = contrast_items(qs, toy, per_question=4 if toy else 2)
        store = capture_models({"finetuned": pair.finetuned}, items, cache_dir / "store", "all",
                               positions="last_prompt", progress=progress, overwrite=True)
        ex = extract(store, "contrast", "last_prompt", role="finetuned")
    elif method == "mean-diff":
        if cfg is None or judge is None:
            raise ValueError("mean-diff needs sampling settings and a judge")
        _, judged = evaluate(pair.finetuned, qs, cfg, judge, cache_dir / "answers", progress=progress)
        store = capture_models({"finetuned": pair.finetuned}, judged, cache_dir / "store", "all",
                               positions="response", progress=progress, overwrite=True)
        ex = extract(store, "mean-diff", "response", role="finetuned")
    else:
        raise ValueError(f"unknown method {method!r}")
    d = ex.direction
    best, table = select_layer_by_ablation(pair.finetuned, d, option_pairs(qs))
    d.meta.update(best_layer=best, layer_selection=table, selection="lowest log-prob P(misaligned) of the "
                  "finetuned model under ablation, on the extraction questions")
    d.save(path)
    return d
