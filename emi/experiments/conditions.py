"""Steering and ablation experiments: conditions x (judge EM rate, coherence), resumable.

A condition is a model of the pair plus at most one intervention. Every intervention with the
persona direction has a same-norm random-direction control. Results are one tidy table
(:mod:`emi.experiments.results`); the direction comes from :mod:`emi.experiments.persona`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from emi.behaviour.logprob import LogprobResult, OptionPair
from emi.behaviour.metrics import Summary
from emi.behaviour.questions import Question
from emi.behaviour.records import SummaryColumns
from emi.behaviour.sampling import SamplingConfig, check_positions
from emi.behaviour.side_effects import BenignItem, SideEffects
from emi.core import vocab
from emi.core.atomic import readable
from emi.core.vocab import ConditionKind, DirectionKind, EngineName, Role, SteerPositions
from emi.directions.direction import Direction, random_like
from emi.engines import base as engines
from emi.engines.base import Backend, Bound
from emi.engines.served import Ablation, Served, Steering
from emi.engines.served import plain as served_plain
from emi.experiments.results import ResultRow
from emi.interventions import hooks, weights
from emi.judging.evaluation import evaluate
from emi.judging.judges import Judge
from emi.models.loading import LoadedModel, ModelPair


@dataclass(frozen=True)
class Condition:
    name: str
    role: Role
    kind: ConditionKind = "none"
    alpha: float = 0.0
    layers: tuple[int, ...] = ()
    direction: DirectionKind = "persona"
    relative: bool = False
    positions: SteerPositions = "all"


@dataclass(frozen=True)
class ConditionResult:
    """One condition of a steer run and what it measured; :meth:`row` is its line of results.jsonl."""

    condition: Condition
    engine: EngineName
    summary: Summary  # EM rate and coherence, with CIs
    logprob: LogprobResult | None = None  # P(misaligned) on option pairs; None without pairs
    side_effects: SideEffects | None = None  # KL on benign text; None without a benign set

    def record(self) -> ResultRow:
        c = self.condition
        return ResultRow(condition=c.name, model=c.role, engine=self.engine, intervention=c.kind, alpha=c.alpha,
                         layers=list(c.layers), direction=c.direction if c.kind != "none" else "",
                         relative=c.relative, positions=c.positions if c.kind == "steer" else "",
                         summary=SummaryColumns.of(self.summary), logprob=self.logprob, side_effects=self.side_effects)

    def row(self) -> dict[str, object]:
        return self.record().row()


def standard_conditions(direction: Direction, alphas: Sequence[float], layers: Sequence[int] | None = None,
                        relative: bool = False, positions: SteerPositions = "all", with_control: bool = False,
                        ablate_layers: Sequence[int] | None = None, sweep_layers: bool = False,
                        targets: Sequence[Role] = ("base",)) -> list[Condition]:
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
                for kind in KINDS:
                    out.append(Condition(f"{target} {sign} {abs(a):g} {kind}{where}", target, "steer", a, group, kind,
                                         relative, positions))
    return out


KINDS: tuple[DirectionKind, ...] = ("persona", "random")


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


def condition_identity(c: Condition, model: LoadedModel, persona: Direction, random: Direction) -> dict[str, Any]:
    """Who answers in condition ``c``: the checkpoint and the exact intervention (answers are keyed
    by this, so a change of direction, alpha or layers never reuses another condition's answers)."""
    out: dict[str, Any] = {"model": model.identity()}
    if c.kind != "none":
        d = persona if c.direction == "persona" else random
        out["intervention"] = {"kind": c.kind, "alpha": c.alpha, "layers": list(c.layers), "relative": c.relative,
                               "positions": c.positions, "direction": d.fingerprint(),
                               "source_layer": persona.best_layer}
    return out


def run(pair: ModelPair, conditions: Sequence[Condition], direction: Direction, questions: Sequence[Question],
        cfg: SamplingConfig, judge: Judge, out: str | Path, random_seed: int = 0,
        progress: bool = True, pairs: Sequence[OptionPair] | None = None,
        benign: Sequence[BenignItem] | None = None, engine: Backend | None = None,
        denominator: str = "coherent") -> list[ConditionResult]:
    """Evaluate every condition (answers and judgements cached under ``out``); one
    :class:`ConditionResult` per condition, in the order of ``conditions``. Conditions run grouped by
    model, and within a model by the checkpoint an engine serves, so a pair that holds one model
    at a time loads each at most once and vLLM starts once per checkpoint; a model's side effects
    are measured after its last condition, its unmodified benign distribution once. ``pairs``: option pairs
    for the log-prob columns (default: those of ``questions`` where emi has them; ``[]``: no
    columns). ``benign``: conversations the side effects are measured on (emi.behaviour.side_effects:
    KL from the unmodified model, the aligned answers' log-prob change); None: the pair kit's benign
    set; ``[]``: no side-effect columns. ``engine``: sample there the conditions it serves (see
    :func:`served_condition`: a server every checkpoint condition, and steering with vllm-lens;
    vLLM that emi starts, every condition); the metrics that need the model (log-prob, side
    effects) stay in-process. Results say which engine sampled each condition. A vLLM engine's last
    server keeps running: the caller closes it (the commands do, also on errors and Ctrl-C)."""
    from emi.behaviour.logprob import logprob_metrics, option_pairs
    from emi.behaviour.side_effects import load_benign

    for c in conditions:
        if c.kind == "steer" and engine is None:
            check_positions(cfg, c.positions)
    if pairs is None:
        pairs = option_pairs(questions, required=False)
    if benign is None:
        benign = load_benign(pair.spec.kit.benign)
    rnd = random_like(direction, seed=random_seed)
    # P(misaligned) on the option pairs asked as the answers are (cfg's elicitation; the default: the plain
    # chat prompt), and so the aligned answers' log-probs the side effects compare
    asked = functools.partial(logprob_metrics, pairs=pairs, elicitation=cfg.elicitation, sampling_seed=cfg.seed)
    engines.prepare(engine, pair)
    results: dict[int, ConditionResult] = {}
    order = _ordered(conditions)
    last_of_role = {c.role: i for i, c in order}
    done: list[tuple[int, ConditionResult]] = []  # the conditions of the model in use, side effects to come
    for i, c in order:
        model = pair[c.role]
        ident = condition_identity(c, model, direction, rnd)
        served = served_condition(c, model, direction, rnd, Path(out), engine) if engine else None
        bound = None
        if engine and served:
            ident = {**ident, "engine": engine.describe(), "served": served.key()}
            bound = Bound(engine, served, model.tokenizer)
        else:
            check_positions(cfg, c.positions if c.kind == "steer" else "all")
        with applied(c, model, direction, rnd):
            summary, _ = evaluate(model, questions, cfg, judge, out, label=c.name, progress=progress,
                                  identity=ident, engine=bound, denominator=denominator)
            lp = asked(model) if pairs else None
        name = cast(EngineName, vocab.check(bound.name, EngineName, "engine")) if bound else "in-process"
        done.append((i, ConditionResult(c, name, summary, lp)))
        if i == last_of_role.get(c.role):
            results.update(_with_side_effects(model, benign, done, direction, rnd, asked))
            done = []
    return [results[i] for i in range(len(conditions))]


def _with_side_effects(model: LoadedModel, benign: Sequence[BenignItem], done: list[tuple[int, ConditionResult]],
                       persona: Direction, random: Direction, asked: Callable[[LoadedModel], LogprobResult]
                       ) -> list[tuple[int, ConditionResult]]:
    """``done`` (one model's conditions) with their side effects (emi.behaviour.side_effects): KL on
    ``benign`` from the unmodified model, whose distribution is computed once per batch for all of
    them, and the aligned answers' log-prob change from the unmodified model's (a condition without
    intervention measured them; else ``asked(model)``). ``benign`` empty: no side effects."""
    from emi.behaviour.side_effects import benign_kls, summarize

    if not benign:
        return done
    unmodified: tuple[float, ...] = ()
    if any(r.logprob is not None for _, r in done):
        plain = next((r.logprob for _, r in done if r.condition.kind == "none" and r.logprob is not None), None)
        unmodified = (plain if plain is not None else asked(model)).aligned_logprob
    intervened = [r.condition for _, r in done if r.condition.kind != "none"]
    kls = iter(benign_kls(model, benign, [functools.partial(applied, c, model, persona, random) for c in intervened])
               if intervened else [])
    return [(i, dataclasses.replace(r, side_effects=summarize(
        next(kls) if r.condition.kind != "none" else None, len(benign), unmodified,
        r.logprob.aligned_logprob if r.logprob is not None else ()))) for i, r in done]


def _ordered(conditions: Sequence[Condition]) -> list[tuple[int, Condition]]:
    """Grouped by role (first use), then by what an engine serves: the role's own checkpoint, then
    each every-writer ablation (its own exported checkpoint)."""
    roles = {r: i for i, r in enumerate(dict.fromkeys(c.role for c in conditions))}

    def key(ic: tuple[int, Condition]) -> tuple[int, int, str, int]:
        c = ic[1]
        exported = c.kind == "ablate" and not c.layers
        return roles[c.role], int(exported), c.direction if exported else "", ic[0]

    return sorted(enumerate(conditions), key=key)


def served_condition(c: Condition, model: LoadedModel, persona: Direction, random: Direction, out: Path,
                     engine: Backend) -> Served | None:
    """What ``engine`` samples for condition ``c``, or None (it runs in-process): the role's
    checkpoint (and LoRA adapter), with vllm-lens steering, or a hook projecting the direction out
    at chosen layers; ablation at every residual writer is the checkpoint with the direction
    ablated from its weights (exactly that edit; exported once under ``out/served/``)."""
    plain = served_plain(model)
    d = persona if c.direction == "persona" else random
    if c.kind == "none":
        wanted = plain
    elif c.kind == "steer":
        deltas = torch.stack([hooks.steer_delta(d, layer, c.alpha, c.relative) for layer in c.layers])
        wanted = Served(plain.checkpoint, plain.adapter, steering=Steering(tuple(c.layers), deltas, c.positions))
    elif c.layers:
        wanted = Served(plain.checkpoint, plain.adapter,
                        ablation=Ablation(tuple(c.layers), hooks.unit_vector(d, persona.best_layer)))
    else:
        if not engine.serves(plain):
            return None
        return Served(str(export_ablated(c, model, d, persona.best_layer, out)))
    return wanted if engine.serves(wanted) else None


def export_ablated(c: Condition, model: LoadedModel, d: Direction, layer: int, out: Path) -> Path:
    """The checkpoint with ``d`` ablated from every residual writer, exported once under ``out/served/``
    (a LoRA role's merged weights: a full checkpoint a server loads alone)."""
    folder = Path(out).resolve() / "served" / f"{model.role}-ablated-{d.fingerprint()[:12]}-L{layer}"
    if not (folder / "export.json").is_file():
        weights.write_ablated(model, d, layer, folder, {"role": model.role, "condition": c.name})
    readable(folder)  # a server running as another user reads it
    return folder
