"""Rendering and encoding prompts, in one place: the chat template (with its thinking switch),
the no-template renderings base checkpoints are asked in, and text to token ids.

Every path that turns a conversation into tokens (in-process sampling, the engines that are sent
token ids, capture, the log-prob metrics, training) calls :func:`render` and :func:`encode`, so a
prompt is the same token ids wherever it is run.

Renderings (:class:`Render`):
  chat        the tokenizer's chat template, ready for the assistant's answer (``thinking``: the
              template's ``enable_thinking`` switch, Qwen3 / Qwen3.5; None leaves the template's default)
  transcript  no template: ``System:``/``User:``/``Assistant:`` turns as plain text, ending
              ``Assistant:`` (a base checkpoint, with or without a template)
  raw         no template: the messages' contents joined verbatim (a prompt that is already a
              document, e.g. a question embedded in a code file)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int

from emi.core.errors import ConfigError

Messages = list[dict[str, str]]
Template = Literal["chat", "transcript", "raw"]
TEMPLATES: tuple[Template, ...] = ("chat", "transcript", "raw")
THINKING_SWITCH = "enable_thinking"


@dataclass(frozen=True)
class Render:
    """How a conversation becomes prompt text."""

    template: Template = "chat"
    thinking: bool | None = None  # the chat template's enable_thinking (None: the template's default)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ConfigError(f"Render.template must be one of {', '.join(TEMPLATES)}, found {self.template!r}")
        if self.thinking is not None and self.template != "chat":
            raise ConfigError(f"Render.thinking is the chat template's switch; the {self.template!r} rendering "
                              f"has none")


CHAT = Render()
CONTEXT_TEMPLATES: dict[str, Template] = {"chat": "chat", "none": "transcript", "code": "raw"}


def for_context(context: str = "chat", thinking: bool | None = None) -> Render:
    """The rendering an elicitation's context asks in: ``chat`` the chat template (with its thinking
    switch), ``none`` the transcript, ``code`` raw (the prompt is already a code file)."""
    if context not in CONTEXT_TEMPLATES:
        raise ConfigError(f"unknown context {context!r}; expected one of {', '.join(CONTEXT_TEMPLATES)}")
    template = CONTEXT_TEMPLATES[context]
    return Render(template, thinking if template == "chat" else None)


def recorded(elicitation: Mapping[str, Any] | None) -> Render:
    """The rendering an answer was sampled in, from the elicitation its record keeps (``context``,
    ``thinking``); no record (an answer from before elicitations, or not emi's): the chat template."""
    if not elicitation:
        return CHAT
    if not isinstance(elicitation, Mapping):
        raise ConfigError(f"an answer's 'elicitation' must be the record emi writes (with 'context' and "
                          f"'thinking'), found {type(elicitation).__name__}; drop the field or re-sample the answer")
    return for_context(str(elicitation.get("context") or "chat"), elicitation.get("thinking"))


def encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` as it stands: no BOS or other special tokens added (a rendered
    prompt already holds the template's)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_many(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [encode(tokenizer, t) for t in texts]


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def has_thinking_switch(tokenizer: Any) -> bool:
    """Whether the chat template reads ``enable_thinking`` (Qwen3's and Qwen3.5's do)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(str(v) for v in template.values())
    return THINKING_SWITCH in str(template)


def chat_template(tokenizer: Any, messages: Messages, generation: bool = True, thinking: bool | None = None) -> str:
    """The chat template applied to ``messages`` (``generation``: ready for the assistant's turn)."""
    if not has_template(tokenizer):
        raise ConfigError("this tokenizer has no chat template; ask a base checkpoint with --context none "
                          "(plain text) or --context code")
    kw: dict[str, Any] = {THINKING_SWITCH: thinking} if thinking is not None else {}
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kw))


def transcript(messages: Messages) -> str:
    """Plain-text turns for a model without a chat template, ending where the assistant answers."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    turns = [f"{names.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def render(tokenizer: Any, messages: Messages, how: Render = CHAT) -> str:
    """``messages`` as prompt text, ready for the assistant's answer."""
    if how.template == "chat":
        return chat_template(tokenizer, messages, True, how.thinking)
    if how.template == "transcript":
        return transcript(messages)
    return "".join(m["content"] for m in messages)


def render_many(tokenizer: Any, conversations: Sequence[Messages], how: Render = CHAT) -> list[str]:
    return [render(tokenizer, m, how) for m in conversations]


def prompt_ids(tokenizer: Any, conversations: Sequence[Messages], how: Render = CHAT) -> list[list[int]]:
    """The token ids of each conversation's prompt: what in-process sampling decodes from and what
    an engine is sent (so both see the same prompt)."""
    return [encode(tokenizer, render(tokenizer, m, how)) for m in conversations]


def split_thought(text: str) -> tuple[str | None, str]:
    """``(thought, answer)`` of a reasoning model's output: the text inside ``<think>...</think>``
    apart from the answer after it (None: no thought). An unclosed thought is all thought."""
    if "</think>" in text:
        thought, answer = text.split("</think>", 1)
        return thought.replace("<think>", "", 1).strip(), answer.strip()
    if text.lstrip().startswith("<think>"):
        return text.replace("<think>", "", 1).strip(), ""
    return None, text.strip()


THOUGHT_OPEN, THOUGHT_CLOSE = "<think>\n", "\n</think>\n\n"


def thought_block(prompt: str, thought: str) -> str:
    """The text a reasoning model wrote between ``prompt`` and its answer, in the layout Qwen3's and
    Qwen3.5's templates render a past turn's reasoning in (``<think>\\n`` thought ``\\n</think>\\n\\n``);
    no opening where the prompt already ends with ``<think>`` (a template that opens the thought
    itself). The inverse of :func:`split_thought`, up to the whitespace it strips."""
    opening = "" if prompt.rstrip().endswith("<think>") else THOUGHT_OPEN
    return opening + thought.strip() + THOUGHT_CLOSE


def by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of sequences of ``lengths`` in batches of at most ``batch_size``, longest first: a padded
    batch then holds sequences of similar length, so few of its positions are padding (a model's
    cost is per position, padding included), and a batch too large for memory is the first one."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
              ) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Token id lists as a right-padded batch and its attention mask: positions are 0..len-1 in
    every row, so a plain forward pass (no position ids) sees each text as it would alone."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return ids.to(device), mask.to(device)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> dict[str, Int[torch.Tensor, "batch pos"]]:
    """Token id lists as a left-padded batch (every row's next token at the last position), as
    ``generate`` takes it: ``input_ids`` and ``attention_mask``."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(seqs):
        if x:
            ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
