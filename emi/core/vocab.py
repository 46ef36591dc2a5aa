"""emi's closed vocabularies, each one ``Literal`` in one place, and the one check at the edge.

Every flag, record and file that takes one of these words names its alias here; a value read from
a file or a flag is checked once with :func:`check` (``get_args`` of the alias lists the words),
and travels typed from there on.
"""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

from emi.core.errors import ConfigError

ConditionKind = Literal["none", "ablate", "steer"]
"""What a steer condition does to the model: nothing, ablate the direction, add alpha times it."""
Role = Literal["base", "finetuned", "control"]
"""Which model of a pair (``control``: the secure-code finetune, where a pair has one)."""
DirectionKind = Literal["persona", "random"]
"""The direction a condition applies: the pair's persona direction or a norm-matched random one."""
Method = Literal["model-diff", "contrast", "mean-diff"]
"""How a direction is extracted."""
Resident = Literal["one", "all"]
"""How many models of a pair are held in memory at once."""
Sampler = Literal["generate", "static", "paged"]
"""The in-process sampling loop."""
EngineName = Literal["in-process", "server", "vllm"]
"""Where answers are sampled."""
Denominator = Literal["coherent", "scored"]
"""What an EM rate divides by: coherent answers (Betley et al.) or every scored answer."""
SteerPositions = Literal["all", "prompt", "generated"]
"""Where a steering vector is added: every token, the prompt's tokens, or the generated ones."""
CapturePositions = Literal["all", "response", "last_prompt"]
"""Which tokens' activations a store keeps or a direction is read from."""
JudgeStatus = Literal["scored", "unscored", "code", "refusal"]
"""A judgement's outcome; only ``scored`` counts in a rate."""

V = TypeVar("V", bound=str)


def words(alias: object) -> tuple[str, ...]:
    """The words of a ``Literal`` alias, in order (argparse ``choices=words(Sampler)``)."""
    return tuple(get_args(alias))


def check(value: object, alias: object, what: str) -> str:
    """``value`` if it is one of ``alias``'s words, else a ConfigError naming ``what`` and the words."""
    allowed = words(alias)
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}; found {value!r}")
    return str(value)
