"""Training dynamics: when does the persona direction appear, relative to EM and to the task?

For a series of checkpoints along a finetune (folders, hub revisions, or LoRA adapters on the
base), each loaded in turn (one model in memory at a time), :func:`trajectory` measures:

- EM rate and coherence (the judge), and the judge-free log-prob P(misaligned) (emi.behaviour.logprob);
- ``projection``: the mean projection of the last-prompt-token residual activation on the final
  persona direction (unit vector, at its layer) over the evaluation prompts, and
  ``projection_shift``: the same minus the base model's, per prompt, then averaged (95% CI over
  prompts). persona_vectors (Chen et al. 2025) found that this activation shift along a persona
  vector predicts the trait shift after finetuning (r = 0.76-0.97);
- ``cosine``: the cosine between the checkpoint's own model-diff direction (its last-prompt-token
  activation minus the base's, mean over the extraction prompts, at the same layer) and the final
  direction;
- ``task_rate``: the finetune's own task where the pair's kit defines one (the embedded organism's:
  the share of insecure code). Betley et al. (2025) found EM and task performance not tightly coupled over
  training.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from emi.activations.readers import hf_reader
from emi.behaviour.logprob import OptionPair, logprob_metrics
from emi.behaviour.metrics import Rate, bootstrap, rate
from emi.behaviour.questions import Question, load_questions
from emi.behaviour.records import NAN3, Estimate
from emi.behaviour.sampling import SamplingConfig, generate_answers
from emi.directions.direction import Direction
from emi.experiments.measures import Judging, Measures, TrajectoryRow
from emi.judging.evaluation import evaluate
from emi.judging.judges import Judge
from emi.models import chat
from emi.models.chat import pad_right
from emi.models.kit import TaskMetric
from emi.models.loading import LoadedModel


@torch.no_grad()
def last_prompt_activations(lm: LoadedModel, messages: Sequence[list[dict[str, str]]], layer: int,
                            batch_size: int = 16) -> Float[torch.Tensor, "prompt d_model"]:
    """The residual stream after block ``layer`` at the last prompt token (the token before the
    answer), one row per conversation, in float32 on the CPU."""
    tok = lm.tokenizer
    prompts = chat.render_many(tok, messages)
    out = []
    with lm.active() as model:
        read = hf_reader(model, [layer])
        for i in range(0, len(prompts), batch_size):
            ids = [chat.encode(tok, p) for p in prompts[i: i + batch_size]]
            input_ids, mask = pad_right(ids, tok.pad_token_id, lm.device)
            h = read(input_ids, mask)[("resid", layer)]
            out.append(h[torch.arange(len(ids)), torch.tensor([len(x) - 1 for x in ids])].float().cpu())
    return torch.cat(out)


def step_of(checkpoint: str, index: int) -> int:
    """A checkpoint's training step: ``global_step`` of a Hugging Face Trainer checkpoint
    (trainer_state.json), ``finetune_step`` of an emi organism checkpoint, digits that end its name
    (``step-040``, ``checkpoint-500``, ``org/model@step-10``), else its position in the series."""
    import json

    folder = Path(checkpoint)
    for name, key in (("trainer_state.json", "global_step"), ("emi_organism.json", "finetune_step")):
        f = folder / name
        if f.is_file():
            try:
                value = json.loads(f.read_text()).get(key)
            except (OSError, ValueError):
                value = None
            if isinstance(value, int):
                return value
    m = re.search(r"(\d+)$", checkpoint.rstrip("/"))
    return int(m.group(1)) if m else index


def task_rate(lm: LoadedModel, task: TaskMetric, cfg: SamplingConfig, out: Path | None, label: str,
              progress: bool = True, engine: Any = None) -> Rate:
    """The share of sampled answers to the task's prompts that do the task (answers cached);
    ``engine``: sampled there (emi.engines), else in-process."""
    from emi.engines.base import bind

    qs = load_questions(task.questions)
    bound, ident = bind(engine, lm)
    answers = generate_answers(lm, qs, cfg, out=out, label=label, progress=progress,
                               identity=ident or {"model": lm.identity()}, engine=bound)
    scored = [(a.get("id", "?"), f) for a in answers if (f := task.score(a["question"], a["answer"])) is not None]
    return rate((f for _, f in scored), seed=cfg.seed, groups=[q for q, _ in scored])


@dataclass(frozen=True)
class Reference:
    """What every checkpoint is compared with: the base's activations and the final direction."""

    direction: Direction
    layer: int
    base_extract: Float[torch.Tensor, "prompt d_model"]  # base, extraction prompts
    base_eval: Float[torch.Tensor, "prompt d_model"]  # base, evaluation prompts

    @classmethod
    def of(cls, base: LoadedModel, direction: Direction, extract: Sequence[Question], questions: Sequence[Question]
           ) -> Reference:
        layer = direction.best_layer
        return cls(direction, layer, last_prompt_activations(base, [q.messages() for q in extract], layer),
                   last_prompt_activations(base, [q.messages() for q in questions], layer))

    @property
    def unit(self) -> Float[torch.Tensor, " d_model"]:
        return self.direction.at(self.layer, unit=True).float()


def measure(lm: LoadedModel, label: str, step: int, ref: Reference, questions: Sequence[Question],
            extract: Sequence[Question], cfg: SamplingConfig, judge: Judge, out: Path,
            pairs: Sequence[OptionPair], task: TaskMetric | None, progress: bool = True,
            engine: Any = None, denominator: str = "coherent") -> TrajectoryRow:
    """Every trajectory metric of one checkpoint (answers sampled by ``engine`` where given)."""
    from emi.engines.base import bind

    bound, ident = bind(engine, lm)
    summary, _ = evaluate(lm, questions, cfg, judge, out, label=label, progress=progress,
                          identity=ident or {"model": lm.identity()}, engine=bound, denominator=denominator)
    lp = logprob_metrics(lm, pairs, elicitation=cfg.elicitation, sampling_seed=cfg.seed) if pairs else None
    acts_eval = last_prompt_activations(lm, [q.messages() for q in questions], ref.layer)
    shift = (acts_eval - ref.base_eval) @ ref.unit
    diff = (last_prompt_activations(lm, [q.messages() for q in extract], ref.layer) - ref.base_extract).mean(0)
    norm = float(diff.norm())
    cosine = float(diff @ ref.unit / norm) if norm > 1e-6 * float(ref.base_extract.norm(dim=-1).mean()) else float("nan")
    task_r = task_rate(lm, task, cfg, out / "task-answers.jsonl", label, progress, engine) if task else None
    measures = Measures(em=summary.em, coherence=summary.coherence, n_answers=summary.n_answers,
                        p_misaligned=Estimate(lp.choice, lp.choice_lo, lp.choice_hi) if lp else NAN3,
                        projection=float((acts_eval @ ref.unit).mean()),
                        projection_shift=Estimate(*bootstrap(shift.numpy(), seed=cfg.seed)))
    return TrajectoryRow(checkpoint=label, step=step, measures=measures, cosine=cosine, diff_norm=norm, task=task_r,
                         judging=Judging.of(summary))


def correlations(points: Sequence[TrajectoryRow]) -> dict[str, float]:
    """Pearson r across checkpoints between the projection shift and each behaviour."""
    x = np.array([p.measures.projection_shift.value for p in points])
    out = {}
    for name, ys in (("em_rate", [p.measures.em.value if p.measures.em.n else np.nan for p in points]),
                     ("p_misaligned", [p.measures.p_misaligned.value for p in points]),
                     ("task_rate", [p.task.value if p.task and p.task.n else np.nan for p in points])):
        y = np.array(ys, dtype=float)
        ok = ~np.isnan(y) & ~np.isnan(x)
        if ok.sum() >= 3 and np.std(y[ok]) > 0 and np.std(x[ok]) > 0:
            out[name] = float(np.corrcoef(x[ok], y[ok])[0, 1])
    return out


def trajectory(checkpoints: Sequence[tuple[str, Callable[[], LoadedModel]]], base: LoadedModel,
               direction: Direction, questions: Sequence[Question], extract: Sequence[Question],
               cfg: SamplingConfig, judge: Judge, out: Path, pairs: Sequence[OptionPair],
               task: TaskMetric | None = None, release: Callable[[], None] | None = None,
               log: Callable[[str], None] | None = None, progress: bool = True,
               engine: Any = None, denominator: str = "coherent") -> list[TrajectoryRow]:
    """Measure every checkpoint (``(label, load)`` in training order; ``load`` returns it loaded,
    ``release`` frees it before the next); ``engine`` samples the answers (a vLLM server per
    checkpoint, or a LoRA checkpoint as an adapter on the base's)."""
    ref = Reference.of(base, direction, extract, questions)
    points = []
    for i, (label, load) in enumerate(checkpoints):
        if log:
            log(f"checkpoint {i + 1}/{len(checkpoints)}: {label}")
        points.append(measure(load(), label, step_of(label, i), ref, questions, extract, cfg, judge, out, pairs,
                              task, progress, engine, denominator))
        if release:
            release()
    return points
