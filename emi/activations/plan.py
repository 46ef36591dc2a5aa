"""What a capture will write, planned before any model runs: the texts' tokens and answer spans,
the positions kept of each, the :class:`CaptureSpec`, and the shards the rows are cut into.

Positions: ``all`` tokens, ``response`` tokens, ``prompt`` tokens, ``last_prompt`` (the last
token before the answer, where the model decides which persona to voice), ``response_mean`` (one
row per text: the mean over its answer tokens), or ``thought`` (what an answer sampled with
thinking on wrote before it: its thought, tags included). An answer with a thought is captured as the model
wrote it: prompt, thought, answer; ``prompt`` and ``last_prompt`` stay the prompt's, before the
thought, and ``row.response`` marks the answer's tokens only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from emi.activations.store import DTYPES, THOUGHTS, StoreSpec
from emi.core.errors import ConfigError
from emi.models import layers as L
from emi.models.chat import Messages, Render, encode, recorded, render, thought_block

POSITIONS = ("all", "response", "prompt", "last_prompt", "response_mean", "thought")


Item = Mapping[str, Any] | str
"""A text to capture: a string, or a record with ``messages``, ``question``/``answer`` (an answer
record, emi.behaviour.answers.AnswerRecord or Judged, is one), ``text`` or ``input_ids``; its
other fields become the text's metadata in the store."""


@dataclass
class Text:
    ids: list[int]
    response: tuple[int, int] | None  # [start, end) of the answer tokens
    meta: dict[str, Any]
    # [start, end) of the thought: what the model wrote between prompt and answer (its tags included)
    thought: tuple[int, int] | None = None

    @property
    def prompt_end(self) -> int:
        """Where the prompt ends: at the thought, else at the answer."""
        if self.response is None:
            return len(self.ids)
        return self.thought[0] if self.thought is not None else self.response[0]


def prepare_texts(items: Sequence[Item], tokenizer: Any) -> list[Text]:
    """Tokenise answers (records with ``question``/``answer``, or ``messages``) or plain strings.

    A chat's ids are the generation prompt, rendered as the answer was sampled (see
    :func:`conversation`), followed by the answer's thought where its record keeps one (``thought``:
    sampled with thinking on), the answer and the end-of-turn token: what the model saw while
    answering.
    """
    if not items:
        raise ConfigError("no texts to capture: the list is empty")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            ids = encode(tokenizer, item)
            out.append(Text(ids, None, {"text": item}))
            continue
        if "text" in item and "answer" not in item and "messages" not in item:  # a plain text record
            ids = encode(tokenizer, item["text"])
            out.append(Text(ids, None, dict(item)))
            continue
        if "input_ids" in item:  # already tokenised
            ids = [int(x) for x in item["input_ids"]]
            if not ids:
                raise ConfigError(f"text {i} has no tokens")
            out.append(Text(ids, None, {k: v for k, v in item.items() if k != "input_ids"}))
            continue
        msgs, how = conversation(item, i)
        prompt = render(tokenizer, msgs[:-1], how)
        p_ids, thought = encode(tokenizer, prompt), None
        if captures_thought(item):
            written = encode(tokenizer, thought_block(prompt, item["thought"]))  # one text, as BPE merges it
            thought = (len(p_ids), len(p_ids) + len(written))
            p_ids = p_ids + written
        a_ids = encode(tokenizer, msgs[-1]["content"])
        ids = p_ids + a_ids + [tokenizer.eos_token_id]
        meta = {k: v for k, v in item.items() if k != "messages"}
        out.append(Text(ids, (len(p_ids), len(p_ids) + len(a_ids)), meta, thought))
    return out


def captures_thought(item: Mapping[str, Any]) -> bool:
    """Whether a capture puts ``item``'s thought between its prompt and answer: it keeps one
    (``thought``: sampled with thinking on) and was asked in the chat template."""
    return isinstance(item.get("thought"), str) and recorded(item.get("elicitation")).template == "chat"


def thought_spec(texts: Sequence[Text]) -> StoreSpec:
    """The store spec's entry for ``texts``: ``thoughts`` where some text's thought is captured (so a
    store of the same answers captured before thoughts were is not resumed as if it held them)."""
    return StoreSpec(thoughts=THOUGHTS) if any(t.thought for t in texts) else StoreSpec()


def conversation(item: Mapping[str, Any], i: int = 0) -> tuple[Messages, Render]:
    """An answer record's conversation (its ``messages``, or its question and answer) and the
    rendering it was sampled in (its elicitation's context: the chat template, the transcript or a
    code file; emi.models.chat.recorded), so a capture sees the prompt the model answered."""
    msgs = item.get("messages")
    how = recorded(item.get("elicitation"))
    if msgs is None:
        if "question" not in item or "answer" not in item:
            raise ConfigError(f"text {i} needs 'messages', 'question' and 'answer', 'text' or 'input_ids' "
                              f"(found {sorted(item)})")
        if how.template != "chat":
            raise ConfigError(f"text {i} was asked with --context {item['elicitation'].get('context')} and its "
                              f"record keeps no 'messages' (the prompt it was asked with); capture it with "
                              f"python -m emi.cache and the same elicitation flags instead of --answers")
        msgs = ([{"role": "system", "content": item["system"]}] if item.get("system") else []) + [
            {"role": "user", "content": item["question"]}, {"role": "assistant", "content": item["answer"]}]
    if msgs[-1]["role"] != "assistant":
        raise ConfigError(f"text {i}: the last message must be the assistant's answer")
    return msgs, how


def select_positions(text: Text, mode: str) -> range:
    """The token positions of ``text`` that ``mode`` captures (always a contiguous range)."""
    n = len(text.ids)
    if mode == "all":
        return range(n)
    if text.response is None:
        raise ConfigError(f"positions {mode!r} need chat texts with an answer; plain texts support only 'all'")
    s, e = text.response
    if mode in ("response", "response_mean"):
        return range(s, e)
    if mode == "prompt":
        return range(text.prompt_end)
    if mode == "last_prompt":
        return range(text.prompt_end - 1, text.prompt_end)
    if mode == "thought":
        return range(*text.thought) if text.thought is not None else range(0)
    raise ConfigError(f"unknown positions {mode!r}; expected one of {', '.join(POSITIONS)}")


@dataclass(frozen=True)
class CaptureSpec:
    """What a capture reads (layers, sites, positions), how it stores it (dtype) and how it cuts the
    work (batches, shards). ``layers``: indices, or a request (``"all"``, ``"0,2"``, ``"4-8"``)
    that :meth:`resolved` turns into indices against the model; ``dtype`` None: the model's own."""

    layers: str | tuple[int, ...] = "all"
    sites: tuple[str, ...] = ("resid",)
    positions: str = "response"
    dtype: str | None = None
    batch_size: int = 16
    shard_texts: int = 256
    shard_mb: int = 256  # a shard also closes before it would exceed this size in memory and on disk

    def __post_init__(self) -> None:
        layers: object = self.layers
        if layers is None:
            layers = "all"
        elif isinstance(layers, int):
            layers = (layers,)
        elif not isinstance(layers, str):
            layers = tuple(int(x) for x in layers)  # type: ignore[attr-defined]
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "sites", tuple(self.sites))
        if self.positions not in POSITIONS:
            raise ConfigError(f"unknown positions {self.positions!r}; expected one of {', '.join(POSITIONS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"unknown store dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        for s in self.sites:
            L.check_site(s)
        if self.batch_size < 1 or self.shard_texts < 1 or self.shard_mb < 1:
            raise ConfigError("batch_size, shard_texts and shard_mb must be >= 1")

    def resolved(self, n_layers: int, dtype: str) -> CaptureSpec:
        """This spec against a model of ``n_layers`` layers whose weights are ``dtype``: layer indices,
        and the store's dtype (the model's where this spec names none)."""
        return replace(self, layers=tuple(L.resolve_layers(self.layers, n_layers)), dtype=self.dtype or dtype)

    @property
    def layer_indices(self) -> tuple[int, ...]:
        if isinstance(self.layers, str):
            raise ConfigError(f"layers {self.layers!r} are not resolved against a model yet: "
                              "CaptureSpec.resolved(n_layers, dtype) first")
        return self.layers

    @property
    def store_dtype(self) -> str:
        if self.dtype is None:
            raise ConfigError("the store's dtype is not resolved against a model yet: CaptureSpec.resolved first")
        return self.dtype


def row_counts(positions: Sequence[range], mode: str) -> list[int]:
    """Rows each text contributes: its positions, or one mean row."""
    return [1 if mode == "response_mean" else len(p) for p in positions]


def plan_shards(counts: Sequence[int], spec: CaptureSpec, n_roles: int, d_model: int) -> list[tuple[int, int]]:
    """Shard boundaries [start, end) over texts with these row counts: at most ``shard_texts`` texts
    and about ``shard_mb`` MB each. Deterministic in the inputs, so a resumed run cuts the same shards."""
    per_row = n_roles * len(spec.layer_indices) * len(spec.sites) * d_model * DTYPES[spec.store_dtype].itemsize
    budget = spec.shard_mb * 2**20
    out, start, size = [], 0, 0
    for i, rows in enumerate(counts):
        b = rows * per_row
        if i > start and (i - start >= spec.shard_texts or size + b > budget):
            out.append((start, i))
            start, size = i, 0
        size += b
    out.append((start, len(counts)))
    return out
