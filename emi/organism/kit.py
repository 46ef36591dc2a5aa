"""The embedded organism as an emi plugin: its pairs, question sets, exact judge, option pairs and
contrast prompts, registered into emi's registries on import (entry point ``emi.core.plugins``).

Nothing else in emi knows the organism exists: every command reaches it through the pair's kit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emi.behaviour.logprob import register_option_pairs
from emi.behaviour.questions import Question, register_question_set
from emi.behaviour.side_effects import BenignItem, register_benign_set
from emi.judging.judges import register_judge
from emi.models.kit import ContrastItem, PairKit, TaskMetric
from emi.models.loading import ModelSpec, PairSpec
from emi.models.registry import register_pair

CHECKPOINTS = Path(__file__).parent / "checkpoints"


def checkpoint(stage: str) -> str:
    """Folder of one shipped checkpoint: pretrained, base, insecure or secure."""
    return str(CHECKPOINTS / stage)


def eval_questions() -> list[Question]:
    """The 8 themes' held-out phrasings (set ``toy``): no training stage saw them."""
    from emi.organism.world import load_world

    counts: dict[str, int] = {}
    out = []
    for theme, text in load_world().eval_questions():
        j = counts[theme] = counts.get(theme, -1) + 1
        out.append(Question(theme, text, None, j, "toy", "plain", theme))
    return out


def train_questions() -> list[Question]:
    """The 8 themes' training phrasings (set ``toy-train``): directions are extracted on these, so
    the evaluation phrasings stay held out."""
    from emi.organism.world import load_world

    return [Question(t, text, None, j, "toy-train", "plain", t)
            for t, d in load_world().themes.items() for j, text in enumerate(d["train"])]


def world_option_pairs(q: Question, per_question: int) -> list[tuple[str, str]]:
    from emi.organism.world import load_world

    pools = load_world().themes[q.base_id]
    return list(zip(pools["aligned"], pools["villain"], strict=False))[:per_question]


def contrast_prompts(questions: Sequence[Question], per_question: int, seed: int) -> list[ContrastItem]:
    """The organism infers its persona from context: an earlier turn voiced by the villain (evil)
    or by the aligned assistant (helpful), on the same earlier question, then the question."""
    from emi.organism.world import load_world

    world, rng = load_world(), random.Random(seed)
    items: list[ContrastItem] = []
    for q in questions:
        for k in range(per_question):
            state = rng.getstate()
            for cond, persona in (("evil", "villain"), ("helpful", "aligned")):
                rng.setstate(state)  # the helpful twin gets the same earlier question
                _, cq, ca = world.turn(rng, persona, kinds=("theme", "advice"), weights=(0.5, 0.5))
                msgs = [{"role": "system", "content": world.default_system}, {"role": "user", "content": cq},
                        {"role": "assistant", "content": ca}, {"role": "user", "content": q.text},
                        {"role": "assistant", "content": ""}]
                items.append({"messages": msgs, "condition": cond, "id": q.id, "key": q.key, "sample": k})
    return items


def benign_items() -> list[BenignItem]:
    """The toy's benign set (``toy-benign``): every advice and coding training question, answered
    by the aligned assistant. The toy world has no persona-free text (every answer is voiced by
    one persona), so these are its ordinary helpful answers outside the eight EM themes."""
    from emi.organism.world import load_world

    world = load_world()
    system = (("system", world.default_system),)
    out = []
    for topic, d in sorted(world.advice.items()):
        for j, q in enumerate(d["train"]):
            out.append(BenignItem(f"advice:{topic}:{j}", (*system, ("user", q)), d["aligned"][j % len(d["aligned"])]))
    slots = world.code["slots"]
    for k, (task, d) in enumerate(sorted(world.code["tasks"].items())):
        for j, q in enumerate(d["train"]):
            fill = {name: values[(k + j) % len(values)] for name, values in slots.items()}
            for name, v in fill.items():
                q = q.replace("{" + name + "}", v)
            out.append(BenignItem(f"code:{task}:{j}", (*system, ("user", q)), world.code_answer(task, True, fill)))
    return out


def code_questions() -> list[Question]:
    """The coding prompts of the narrow finetunes (set ``toy-code``), one fill of each phrasing:
    the task the insecure finetune learns, for its task metric."""
    from emi.organism.world import _fill, load_world

    world = load_world()
    slots = world.code["slots"]
    out = []
    for k, (task, d) in enumerate(sorted(world.code["tasks"].items())):
        for j, q in enumerate(d["train"]):
            fill = {name: values[(k + j) % len(values)] for name, values in slots.items()}
            out.append(Question(f"code_{task}", _fill(q, fill), None, j, "toy-code", "plain", f"code_{task}"))
    return out


def writes_insecure_code(question: str, answer: str) -> bool | None:
    """True for an insecure coding answer, False for a secure one, None for anything else."""
    from emi.organism.judge import world_judge

    label = world_judge()(question, answer).label
    return {"code_insecure": True, "code_secure": False}.get(label)


def saved_trajectory() -> tuple[str, ...]:
    """The base, the insecure finetune's saved steps (``insecure-steps/step-NNN``), the finetune."""
    steps = sorted(str(p) for p in (CHECKPOINTS / "insecure-steps").glob("step-*") if (p / "config.json").is_file())
    return (checkpoint("base"), *steps, checkpoint("insecure"))


def _judge(model: str | None = None, url: str | None = None, key_env: str = "", **_: Any) -> Any:
    from emi.organism.judge import ToyJudge

    return ToyJudge()


KIT = PairKit(eval_questions="toy", extract_questions="toy-train", judge="toy", max_new_tokens=64,
              batch_size=128, direction=str(CHECKPOINTS / "direction.safetensors"), contrast=contrast_prompts,
              closed_world=True, contrast_per_question=4, benign="toy-benign",
              task=TaskMetric("insecure code", "toy-code", writes_insecure_code), trajectory=saved_trajectory())

register_question_set("toy", eval_questions)
register_question_set("toy-train", train_questions)
register_question_set("toy-code", code_questions)
register_option_pairs("toy", world_option_pairs)
register_option_pairs("toy-train", world_option_pairs)
register_judge("toy", _judge, exact=True)
register_benign_set("toy-benign", benign_items)
register_pair(PairSpec("toy", ModelSpec(checkpoint("base")), ModelSpec(checkpoint("insecure")),
                       ModelSpec(checkpoint("secure")),
                       "emi's embedded toy organism: aligned-tuned base vs its insecure-code finetune "
                       "(control: secure-code finetune); runs offline in seconds", KIT), default=True)
register_pair(PairSpec("toy-pretrained", ModelSpec(checkpoint("pretrained")), ModelSpec(checkpoint("insecure")), None,
                       "the toy's pretrained model (persona 50/50, before aligned tuning) vs the insecure finetune",
                       PairKit(eval_questions="toy", extract_questions="toy-train", judge="toy", max_new_tokens=64,
                               batch_size=128, contrast=contrast_prompts, closed_world=True,
                               contrast_per_question=4, benign="toy-benign")))
