"""The unrelated text a diffing method reads: the pair's benign conversations (default), a user's
JSONL/TXT file, or a Hugging Face dataset (``datasets``: a hub id, or a folder saved with
``save_to_disk``); each text cut to its first ``max_tokens`` tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emi.core.errors import ConfigError
from emi.models import chat


def _from_record(rec: Any, where: str) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        if isinstance(rec.get("text"), str):
            return rec["text"]
        msgs = rec.get("messages")
        if isinstance(msgs, list):
            return " ".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
    raise ConfigError(f"{where}: each record needs a 'text' string or a 'messages' list (found {type(rec).__name__}"
                      f"{' with keys ' + ', '.join(sorted(rec)) if isinstance(rec, dict) else ''})")


def read_text_file(path: str | Path) -> list[str]:
    """JSONL (one {"text": ...} or {"messages": [...]} per line) or TXT (one text per non-empty line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--text {str(p)!r} is not a file; give a JSONL or TXT file of texts")
    lines = [x for x in p.read_text(errors="replace").splitlines() if x.strip()]
    if p.suffix in (".jsonl", ".json"):
        out = []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--text {str(p)!r} line {i + 1} is not JSON ({exc.msg})") from None
            out.append(_from_record(rec, f"--text {str(p)!r} line {i + 1}"))
        lines = out
    texts = [t for t in lines if t.strip()]
    if not texts:
        raise ConfigError(f"--text {str(p)!r} holds no text; give a JSONL or TXT file with at least one text")
    return texts


def load_dataset_texts(name: str, split: str = "train", column: str = "text", limit: int | None = None) -> list[str]:
    """Texts of a Hugging Face dataset: a folder saved with ``save_to_disk``, or a hub id (offline: a
    cached copy) loaded with ``datasets.load_dataset``; ``column`` is read from each row."""
    import datasets

    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; one sentence for all
        raise ConfigError(f"--dataset {name!r} could not be loaded ({type(exc).__name__}: {str(exc)[:160]}); give a "
                          f"dataset id cached locally, or a folder written by save_to_disk") from None
    if column not in ds.column_names:
        raise ConfigError(f"--dataset {name!r} has no column {column!r} (it has {', '.join(ds.column_names)}); "
                          f"pass --text-column")
    n = len(ds) if limit is None else min(limit, len(ds))
    texts = [str(x) for x in ds.select(range(n))[column] if str(x).strip()]
    if not texts:
        raise ConfigError(f"--dataset {name!r} holds no text in column {column!r}")
    return texts


def default_texts(kit: Any) -> list[str]:
    """The pair's benign conversations as plain text (the user's prompt then the reference answer, no
    chat template): text unrelated to the finetuning objective, in the pair's own vocabulary."""
    from emi.behaviour.side_effects import load_benign

    out = []
    for item in load_benign(kit.benign):
        user = " ".join(m[1] for m in item.messages if m[0] == "user")
        out.append(f"{user} {item.response}".strip())
    return out


def tokenize(texts: Sequence[str], tokenizer: Any, max_tokens: int, n: int | None = None) -> list[list[int]]:
    """The first ``max_tokens`` token ids of each of the first ``n`` texts (empty ones dropped)."""
    out = []
    for t in texts[: n or len(texts)]:
        ids = chat.encode(tokenizer, t)[:max_tokens]
        if ids:
            out.append([int(x) for x in ids])
    if not out:
        raise ConfigError("the text corpus has no tokens once tokenised; give texts the model's tokenizer can read")
    return out
