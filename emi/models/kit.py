"""What a pair brings besides its checkpoints, in one object the registry returns with the pair.

A kit names the question sets a pair is evaluated on and extracts directions from (disjoint, so
extraction never sees an evaluation prompt), its default judge, its sampling defaults, an optional
shipped direction, how persona-contrast prompts are written for it, and the benign conversations
its interventions' side effects are measured on. Question sets, judges and
option pairs are looked up by name in their own registries (``emi.behaviour.questions``, ``emi.judging.judges``,
``emi.behaviour.logprob``), which plugins fill (``emi.core.plugins``). The default kit is the real-model one:
the EM questions of Betley et al. (2025), the preregistered questions for extraction, an
OpenAI-compatible judge, 400 new tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from emi.core.errors import ConfigError


class ContrastItem(TypedDict):
    """One persona-contrast prompt (emi.directions.contrast.contrast_items), its answer turn empty."""

    messages: list[dict[str, str]]
    """The conversation, ending in an empty assistant turn."""
    condition: str
    """Which side of the contrast (``evil`` or ``helpful``)."""
    id: str
    """The question's id."""
    key: str
    """The question's key."""
    sample: int
    """The copy of this prompt (a writer may make several per question)."""


# (questions, per_question, seed) -> contrast items (see emi.directions.contrast.contrast_items)
ContrastWriter = Callable[[Sequence[Any], int, int], list[ContrastItem]]


@dataclass(frozen=True)
class TaskMetric:
    """The narrow task a finetune was trained on, measured on sampled answers (e.g. the share of
    insecure code): ``score(question, answer)`` says whether an answer does the task (True), does
    the opposite (False), or is neither (None: left out of the rate)."""

    name: str
    questions: str  # a question set of task prompts
    score: Callable[[str, str], bool | None]


@dataclass(frozen=True)
class PairKit:
    eval_questions: str = "main"
    extract_questions: str = "preregistered"
    judge: str = "openai"
    max_new_tokens: int = 400
    batch_size: int = 32
    direction: str | None = None  # a shipped persona direction file
    contrast: ContrastWriter | None = None  # None: an evil vs a helpful system prompt
    closed_world: bool = False  # the models know only this kit's questions: warn when asked others
    contrast_per_question: int = 1  # contrast prompts per extraction question when extracting on first use
    # (1 for system-prompt contrast: its prompts are deterministic, so copies would add nothing)
    benign: str = "benign"  # the benign set side effects (KL) are measured on (emi.behaviour.side_effects)
    task: TaskMetric | None = None  # the finetune's own task, for python -m emi.trajectory
    trajectory: tuple[str, ...] = ()  # checkpoints saved along the finetune, in training order

    def sampling(self) -> dict[str, int]:
        """The pair's sampling defaults, as :class:`emi.behaviour.sampling.SamplingConfig` fields."""
        return {"max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size}

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.contrast_per_question < 1:
            raise ConfigError("PairKit.max_new_tokens, batch_size and contrast_per_question must be >= 1")
        if self.eval_questions == self.extract_questions:
            raise ConfigError(f"PairKit: the extraction questions must differ from the evaluation questions "
                              f"(both {self.eval_questions!r}), or extraction sees the evaluation prompts")


REAL = PairKit()
