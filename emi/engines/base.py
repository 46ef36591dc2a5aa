"""The protocol every sampling backend outside emi's process implements (:class:`Backend`: what it
serves, plan, sample, describe, close), a backend bound to one condition (:class:`Bound`, the
emi.behaviour.sampling.Engine that generate_answers calls), and the two calls the stages make:
:func:`prepare` (before a pair's roles sample) and :func:`bind`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from emi.behaviour.sampling import Answer, Messages, SamplingConfig
from emi.core.errors import ConfigError
from emi.core.vocab import EngineName
from emi.engines.served import Served, plain
from emi.models.chat import CHAT, Render

if TYPE_CHECKING:
    from emi.activations.readers import ReaderFactory
    from emi.models.loading import LoadedModel


class EngineDescription(TypedDict, total=False):
    """A backend as answers sampled on it are keyed by (the run key's ``engine``) and as results
    and ``run.json`` record it; in-process runs record ``{"engine": "in-process"}``."""

    engine: EngineName  # always present
    url: str  # --engine server: the server's base URL
    body: dict[str, Any]  # --engine server: the extra request body sent with every completion (--engine-body)
    lens: bool  # --engine server: the server runs vllm-lens (steering and hooks served), present when true
    vllm: str  # --engine vllm: the engine environment's vLLM version
    vllm_lens: str  # --engine vllm: its vllm-lens version


class EngineError(ConfigError):
    """An engine could not start or stopped; the message names the fix."""


class Backend(Protocol):
    """Where a condition's answers are sampled outside emi's process (``--engine server`` or ``vllm``).

    ``name`` is what results and answer lines record; ``label`` how the command names it;
    ``concurrency`` the requests it keeps in flight."""

    @property
    def name(self) -> str: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def label(self) -> str: ...

    def serves(self, served: Served) -> bool:
        """Whether it can sample this condition (the rest run in-process)."""
        ...

    def prepare(self, pairs: Sequence[Any]) -> None:
        """Before these pairs' roles sample (loaded pairs or PairSpecs): what it needs to know up front
        (vLLM: every LoRA adapter a checkpoint serves); a no-op where nothing is."""
        ...

    def know(self, models: Sequence[Any]) -> None:
        """The in-process models of the run (LoadedModels, loaded pairs): what a served checkpoint is
        checked against before it samples (emi.engines.fingerprint)."""
        ...

    def plan(self, served: Sequence[Served]) -> None:
        """These conditions will sample (vLLM: serve their adapters); a no-op where nothing is needed."""
        ...

    def sample(self, served: Served, tokenizer: Any, messages: Sequence[Messages], cfg: SamplingConfig,
               seed: int, render: Render = CHAT) -> list[Answer]:
        """One answer per conversation, in input order, answer i seeded ``seed * 100_003 + i``, its
        prompt the token ids emi.models.chat.prompt_ids gives for ``render`` (the elicitation)."""
        ...

    def readers(self) -> ReaderFactory | None:
        """Capture through this backend (emi.cache --engine): a reader per model, or None (in-process)."""
        ...

    def describe(self) -> EngineDescription:
        """What answers sampled here are keyed by (and results record)."""
        ...

    def close(self) -> None:
        """Stop what it started (a server emi runs); safe to call twice."""
        ...


@dataclass(frozen=True, eq=False)
class Bound:
    """A backend bound to one condition: the :class:`emi.behaviour.sampling.Engine` that
    generate_answers calls."""

    engine: Backend
    served: Served
    tokenizer: Any

    @property
    def name(self) -> str:
        return str(self.engine.name)

    @property
    def in_flight(self) -> int:
        """Requests the engine keeps in flight (--engine-concurrency): generate_answers sends it that
        many answers' worth of batches at once."""
        return int(self.engine.concurrency)

    def answer(self, messages: Sequence[Messages], cfg: SamplingConfig, seed: int, render: Render = CHAT
               ) -> list[Answer]:
        return list(self.engine.sample(self.served, self.tokenizer, messages, cfg, seed, render))


def prepare(engine: Backend | None, *pairs: Any) -> None:
    """Before pairs' roles sample (loaded pairs or PairSpecs): e.g. vLLM serves their LoRA adapters on
    the base's server, so one process serves every adapter role (and every adapter of a trajectory);
    a loaded pair's models are what its served checkpoints are checked against."""
    if engine is not None:
        engine.prepare(pairs)
        engine.know(pairs)


def bind(engine: Backend | None, lm: LoadedModel, served: Served | None = None
         ) -> tuple[Bound | None, dict[str, Any] | None]:
    """``engine`` bound to ``lm`` (as it is, or as ``served``) and the identity its answers are keyed
    by; (None, None) without an engine or where it does not serve that: in-process, keyed as before."""
    served = served or plain(lm)
    if engine is None or not engine.serves(served):
        return None, None
    engine.plan([served])
    engine.know([lm])
    return (Bound(engine, served, lm.tokenizer),
            {"model": lm.identity(), "engine": engine.describe(), "served": served.key()})
