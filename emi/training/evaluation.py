"""The defence table: organisms made by ``python -m emi.finetune`` (one per defence and seed), each
measured with emi's own metrics against one base and one persona direction:

- EM rate and coherence (the judge, 95% CIs), the log-prob P(misaligned), the activation shift along
  the direction at the last prompt token, and the pair kit's task rate: :func:`emi.experiments.dynamics.measure`;
- KL(base || organism) of the next-token distribution on the kit's benign set (nats per token, the
  *KL benign* of ``emi.steer``): what the finetune costs on benign text;
- the shift along the direction at each saved checkpoint (its trajectory over training).

Seeds of one defence are summarised by their mean and spread (sd, min, max).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from emi.behaviour.logprob import OptionPair, answer_logits
from emi.behaviour.metrics import bootstrap
from emi.behaviour.questions import Question
from emi.behaviour.records import Estimate
from emi.behaviour.sampling import SamplingConfig
from emi.behaviour.side_effects import BenignItem
from emi.core.errors import ConfigError
from emi.directions.direction import Direction
from emi.experiments.dynamics import Reference, last_prompt_activations, measure, step_of
from emi.judging.judges import Judge
from emi.models import chat
from emi.models.kit import TaskMetric
from emi.models.loading import LoadedModel, PairLoadOptions, load_pair
from emi.models.organism_folder import Organism
from emi.models.specs import ModelSpec, PairSpec
from emi.training.records import DefenceRow


def benign_shift(base: LoadedModel, model: LoadedModel, items: Sequence[BenignItem], batch_size: int = 8
                 ) -> list[float]:
    """Per benign conversation: KL(base || model) of the next-token distribution, mean over the
    reference answer's tokens (nats per token)."""
    if not items:
        raise ConfigError("the benign set is empty; the KL column needs at least one conversation")
    tok = base.tokenizer
    prompts = chat.render_many(tok, [it.chat() for it in items])
    out: list[float] = []
    for i in range(0, len(items), batch_size):
        p_ids = [chat.encode(tok, p) for p in prompts[i: i + batch_size]]
        a_ids = [chat.encode(tok, it.response) for it in items[i: i + batch_size]]
        with base.active():
            ref = answer_logits(base, p_ids, a_ids).log_softmax(-1)
        with model.active():
            new = answer_logits(model, p_ids, a_ids).log_softmax(-1)
        kl = (ref.exp() * (ref - new)).sum(-1).clamp_min(0).cpu()
        out += [float(x.mean()) for x in kl.split([len(a) for a in a_ids])]
    return out


@dataclass(frozen=True)
class Setup:
    """What every organism is measured with."""

    questions: Sequence[Question]
    extract: Sequence[Question]
    cfg: SamplingConfig
    judge: Judge
    pairs: Sequence[OptionPair]
    task: TaskMetric | None
    benign: Sequence[BenignItem]
    out: Path
    load: PairLoadOptions  # how each pair loads (device, dtype)


def shift_trajectory(spec: PairSpec, org: Organism, ref: Reference, setup: Setup) -> list[list[float]]:
    """[step, mean shift along the direction] at step 0 and at each saved checkpoint."""
    points = [[0.0, 0.0]]
    for i, c in enumerate(org.checkpoints()):
        pair = load_pair(PairSpec(f"{spec.name}-ckpt", spec.base, ModelSpec(str(c)), None, "", spec.kit),
                         roles=("finetuned",), resident="one", **setup.load)
        acts = last_prompt_activations(pair.finetuned, [q.messages() for q in setup.questions], ref.layer)
        points.append([float(step_of(str(c), i)), float(((acts - ref.base_eval) @ ref.unit).mean())])
        pair.release()
    return points


def measure_model(label: str, base: LoadedModel, model: LoadedModel, ref: Reference, setup: Setup,
                  progress: bool = True, kl: Estimate | None = None) -> DefenceRow:
    """One row of the table (its defence the label, without a seed: the caller names the organism),
    asked as ``setup.cfg.elicitation`` asks (its ``evaluated`` column); ``kl``: the benign KL
    already measured for this model (it does not depend on the elicitation)."""
    point = measure(model, label, 0, ref, setup.questions, setup.extract, setup.cfg, setup.judge, setup.out,
                    setup.pairs, setup.task, progress)
    if kl is None:
        kl = Estimate(0.0, 0.0, 0.0) if model is base else Estimate.of(
            bootstrap(benign_shift(base, model, setup.benign), seed=setup.cfg.seed))
    return DefenceRow(label=label, defence=label, checkpoint=point.checkpoint, measures=point.measures,
                      task=point.task, judging=point.judging, kl=kl, n_benign=len(setup.benign),
                      evaluated=setup.cfg.elicitation.label())


def prompted(setup: Setup, system: tuple[str, str]) -> Setup:
    """``setup`` with the elicitation's system prompt replaced by ``system`` (name, text): an
    inoculated organism evaluated with the prompt it was trained with."""
    e = replace(setup.cfg.elicitation, system=system[1], system_name=system[0])
    return replace(setup, cfg=replace(setup.cfg, elicitation=e))


def table(organisms: Sequence[Organism], specs: Sequence[PairSpec], direction: Direction, setup: Setup,
          extra: Sequence[tuple[str, PairSpec]] = (), log: Callable[[str], None] | None = None) -> list[DefenceRow]:
    """Rows: the base, any ``extra`` (label, pair) finetunes, then every organism (defence, seed,
    its measurements, its shift trajectory). An organism trained with a system prompt (inoculation
    prompting) gets a second row evaluated with that prompt (defence ``"<defence> [eval: <prompt>]"``),
    and so does the base, once per such prompt: the defence with and without its prompt."""
    if len({s.base for s in specs}) != 1:
        raise ConfigError("the organisms were finetuned from different bases; compare defences on one base")
    first = load_pair(specs[0], roles=("base",), resident="one", **setup.load)
    base = first.base
    ref = Reference.of(base, direction, setup.extract, setup.questions)
    rows = [replace(measure_model("base", base, base, ref, setup), defence="(base)")]
    systems = [s for s in dict.fromkeys(o.system for o in organisms) if s is not None
               and s[1] != setup.cfg.elicitation.system]
    for system in systems:
        at = prompted(setup, system)
        rows.append(replace(measure_model("base", base, base, ref, at), defence=f"(base) [eval: {system[0]}]",
                            eval_prompt=system[0]))
    todo = [(label, spec, None) for label, spec in extra] + [(str(o.folder), s, o) for o, s in zip(organisms, specs,
                                                                                                   strict=True)]
    for i, (label, spec, org) in enumerate(todo):
        if log:
            log(f"organism {i + 1}/{len(todo)}: {label}")
        pair = load_pair(spec, roles=("finetuned",), resident="one", **setup.load)
        measured = measure_model(label, base, pair.finetuned, ref, setup)
        with_prompt = None
        if org is not None and org.system is not None and org.system[1] != setup.cfg.elicitation.system:
            with_prompt = measure_model(label, base, pair.finetuned, ref, prompted(setup, org.system), kl=measured.kl)
        pair.release()  # before the checkpoints load, one at a time
        if org is None:
            rows.append(measured)
            continue
        rows.append(replace(measured, defence=org.defence, seed=org.seed,
                            shift_trajectory=shift_trajectory(spec, org, ref, setup)))
        if org.system is not None and with_prompt is not None:
            rows.append(replace(with_prompt, defence=f"{org.defence} [eval: {org.system[0]}]", seed=org.seed,
                                eval_prompt=org.system[0]))
    return rows


# the columns the seeds' spread summarises, as spread.json names them
SPREAD: tuple[tuple[str, Callable[[DefenceRow], float]], ...] = (
    ("em_rate", lambda r: r.measures.em.value), ("coherence_rate", lambda r: r.measures.coherence.value),
    ("task_rate", lambda r: r.task.value if r.task is not None else np.nan), ("kl", lambda r: r.kl.value),
    ("projection_shift", lambda r: r.measures.projection_shift.value),
    ("p_misaligned", lambda r: r.measures.p_misaligned.value))


def spread(rows: Sequence[DefenceRow]) -> list[dict[str, object]]:
    """Per defence (organism rows only): the seeds' mean, sd, min and max of EM, coherence, task,
    KL and the shift along the direction."""
    out = []
    for defence in dict.fromkeys(r.defence for r in rows if r.organism):
        group = [r for r in rows if r.defence == defence and r.organism]
        summary: dict[str, object] = {"defence": defence, "seeds": [r.seed for r in group]}
        for key, of in SPREAD:
            v = np.array([of(r) for r in group], dtype=float)
            if np.isnan(v).all():
                continue
            summary.update({f"{key}_mean": float(np.nanmean(v)), f"{key}_sd": float(np.nanstd(v, ddof=1)) if
                            len(v) > 1 else 0.0, f"{key}_min": float(np.nanmin(v)), f"{key}_max": float(np.nanmax(v))})
        out.append(summary)
    return out


def shift_predicts(rows: Sequence[DefenceRow]) -> dict[str, float]:
    """Pearson r across the organisms (every defence and seed) between the activation shift along the
    direction and each behaviour: does the shift predict the trait, as Chen et al. (2025) found
    across finetunes (r = 0.76-0.97)?"""
    orgs = [r for r in rows if r.organism and not r.eval_prompt]  # each organism once
    x = np.array([r.measures.projection_shift.value for r in orgs], dtype=float)
    out = {}
    columns = dict(SPREAD)
    for key in ("em_rate", "p_misaligned", "task_rate"):
        y = np.array([columns[key](r) for r in orgs], dtype=float)
        ok = ~np.isnan(x) & ~np.isnan(y)
        if ok.sum() >= 3 and np.std(x[ok]) > 0 and np.std(y[ok]) > 0:
            out[key] = float(np.corrcoef(x[ok], y[ok])[0, 1])
    return out
