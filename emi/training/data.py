"""Chat datasets for finetuning and screening: JSONL of ``{"messages": [...]}`` (the format of the
EM datasets: insecure code, risky financial advice, ...), validated line by line into typed
records, and encoded with the tokenizer's chat template so that only assistant tokens are learned.

A line may carry ``"harmful": true/false`` (a label :mod:`emi.training.screening` scores against).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emi.core.errors import ConfigError

ROLES = ("system", "user", "assistant")
MAX_EXAMPLES = 200_000  # more lines than this need --max-examples (a finetune on CPU/one GPU never uses more)
MAX_BYTES = 2 * 2**30


@dataclass(frozen=True)
class ChatRecord:
    """One training chat: its messages (role, content) and an optional harmfulness label."""

    messages: tuple[tuple[str, str], ...]
    harmful: bool | None = None
    line: int = 0

    def chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": self.chat()}
        if self.harmful is not None:
            out["harmful"] = self.harmful
        return out


@dataclass(frozen=True)
class ChatDataset:
    path: str
    records: tuple[ChatRecord, ...]
    sha256: str  # of the file's bytes: the provenance of every organism trained on it

    def __len__(self) -> int:
        return len(self.records)


def _record(obj: Any, where: str, line: int) -> ChatRecord:
    fix = 'each line must be {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}'
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise ConfigError(f"{where} is not a chat (no non-empty \"messages\" list); {fix}")
    msgs = []
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(f"{where}, message {i + 1}, is not a chat message (role one of {', '.join(ROLES)}, "
                              f"content a string): found {str(m)[:80]!r}; {fix}")
        msgs.append((m["role"], m["content"]))
    if not any(r == "assistant" and c.strip() for r, c in msgs):
        raise ConfigError(f"{where} has no assistant message with content, so there is nothing to learn; {fix}")
    harmful = obj.get("harmful")
    if harmful is not None and not isinstance(harmful, bool):
        raise ConfigError(f"{where}: \"harmful\" must be true or false, found {harmful!r}")
    return ChatRecord(tuple(msgs), harmful, line)


def load_chats(path: str | Path, max_examples: int | None = None) -> ChatDataset:
    """Every line of a chat JSONL file as a :class:`ChatRecord`; one sentence for the first line that
    is not a chat, an empty file, or a file over :data:`MAX_EXAMPLES` lines (unless ``max_examples``
    takes its first lines)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"dataset {str(p)!r} does not exist; give a JSONL file of {{\"messages\": [...]}} lines")
    if p.stat().st_size > MAX_BYTES and max_examples is None:
        raise ConfigError(f"dataset {str(p)!r} is {p.stat().st_size / 2**30:.1f} GiB, over the "
                          f"{MAX_BYTES // 2**30} GiB emi reads whole; take a subset with --max-examples N")
    data = p.read_bytes()
    records: list[ChatRecord] = []
    limit = max_examples if max_examples is not None else MAX_EXAMPLES
    for i, raw in enumerate(data.splitlines()):
        if not raw.strip():
            continue
        if len(records) >= limit:
            if max_examples is not None:
                break
            raise ConfigError(f"dataset {str(p)!r} has over {MAX_EXAMPLES} examples; take the first N with "
                              f"--max-examples N")
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"line {i + 1} of {str(p)!r} is not JSON; each line must be one "
                              f"{{\"messages\": [...]}} object") from None
        records.append(_record(obj, f"line {i + 1} of {str(p)!r}", i + 1))
    if not records:
        raise ConfigError(f"dataset {str(p)!r} is empty; it needs at least one {{\"messages\": [...]}} line")
    return ChatDataset(str(p), tuple(records), hashlib.sha256(data).hexdigest())


def with_system(data: ChatDataset, system: str) -> ChatDataset:
    """``data`` with every chat's system prompt set to ``system`` (replacing its own, or first):
    inoculation prompting trains this way. Its hash covers the prompt, so the organism's provenance
    and resume key name it."""
    records = tuple(ChatRecord((("system", system), *((r, c) for r, c in rec.messages if r != "system")),
                               rec.harmful, rec.line) for rec in data.records)
    sha = hashlib.sha256(f"{data.sha256}\nsystem: {system}".encode()).hexdigest()
    return ChatDataset(data.path, records, sha)


def write_chats(path: str | Path, records: Sequence[ChatRecord]) -> Path:
    from emi.core import jsonl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    jsonl.write(path, (r.as_json() for r in records))
    return Path(path)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 outside assistant tokens
    assistant: list[bool]  # per token: part of an assistant message


def _render(tok: Any, msgs: list[dict[str, str]], gen: bool) -> str:
    from emi.models.chat import chat_template

    return chat_template(tok, msgs, gen)


def assistant_spans(tok: Any, msgs: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The chat as the template renders it, and the character spans of its assistant messages
    (content and end-of-turn token). A template that re-renders earlier turns (Qwen3's, which drops
    earlier reasoning) keeps only the last assistant message's span."""
    full = _render(tok, msgs, False)
    spans: list[tuple[int, int]] = []
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        pre, upto = _render(tok, msgs[:k], True), _render(tok, msgs[: k + 1], False)
        if full.startswith(upto) and upto.startswith(pre):
            spans.append((len(pre), len(upto.rstrip())))
        elif k == len(msgs) - 1 and full.startswith(pre):
            spans = [(len(pre), len(full.rstrip()))]
    return full, spans


def encode(tok: Any, messages: list[dict[str, str]], max_len: int) -> Encoded:
    """Token ids of the rendered chat (truncated to ``max_len``) and labels on assistant tokens only."""
    full, spans = assistant_spans(tok, messages)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"][:max_len]
    inside = [any(a <= s < b for a, b in spans) for s, _ in enc["offset_mapping"][:max_len]]
    labels = [t if keep else -100 for t, keep in zip(ids, inside, strict=True)]
    return Encoded(ids, labels, inside)


def aligned_chats(source: str, max_examples: int | None = None) -> tuple[ChatRecord, ...]:
    """Aligned chats for the kl and interleave defences: a chat JSONL file, or a benign set's
    conversations with their reference answers (``emi.behaviour.side_effects``; the pair kit's by default)."""
    if source.endswith(".jsonl"):
        return load_chats(source, max_examples).records
    from emi.behaviour.side_effects import load_benign

    return tuple(ChatRecord((*it.messages, ("assistant", it.response)), False) for it in load_benign(source))
