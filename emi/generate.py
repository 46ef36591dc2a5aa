"""Batched sampling of answers from any loaded model, resumable through a JSONL file.

Runs unchanged inside any intervention (emi.hooks): it only calls the model's ``generate``.
Determinism: batch ``b`` is sampled after ``torch.manual_seed(seed + b)``, and batches are
fixed by the question order, so the same seed gives the same answers and a resumed run
reproduces the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emi import jsonl
from emi.errors import ConfigError
from emi.models import LoadedModel, as_loaded
from emi.questions import Question


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 10  # samples per question
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"SamplingConfig.n (samples per question) must be >= 1, found {self.n}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"SamplingConfig.temperature must be finite and >= 0, found {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"SamplingConfig.top_p must be in (0, 1], found {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("SamplingConfig.max_new_tokens and batch_size must be >= 1")


def render_prompts(tokenizer: Any, messages: Sequence[list[dict[str, str]]]) -> list[str]:
    """Chat-template each conversation, ready for the assistant's answer."""
    return [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]


def encode_prompts(tokenizer: Any, prompts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded batch (so every row's next token is at the last position)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def sample(model: LoadedModel | torch.nn.Module, messages: Sequence[list[dict[str, str]]],
           cfg: SamplingConfig, tokenizer: Any = None, seed: int | None = None) -> list[dict[str, Any]]:
    """Answer each conversation once: [{"answer", "n_tokens", "finish"}] in input order."""
    lm = as_loaded(model, tokenizer)
    tok = lm.tokenizer
    with lm.active() as m:
        enc = encode_prompts(tok, render_prompts(tok, messages), lm.device)
        if seed is not None:
            torch.manual_seed(seed)
        kwargs: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id)
        if cfg.temperature > 0:
            kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        hf: Any = m  # a transformers model: generate() is not visible to nn.Module typing
        out = hf.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1]:]
    results = []
    for row in new:
        ids = row.tolist()
        finish = "length"
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
            finish = "eos"
        ids = [i for i in ids if i != tok.pad_token_id]
        results.append({"answer": tok.decode(ids, skip_special_tokens=True).strip(),
                        "n_tokens": len(ids), "finish": finish})
    return results


def generate_answers(model: LoadedModel | torch.nn.Module, questions: Sequence[Question],
                     cfg: SamplingConfig = SamplingConfig(), out: str | Path | None = None,
                     tokenizer: Any = None, label: str | None = None, progress: bool = True,
                     extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Sample ``cfg.n`` answers per question; append them to ``out`` (JSONL) batch by batch.

    With ``out`` already holding a part of the same run, only the missing batches are sampled.
    Records carry the question fields, the sample index, the model label and the seed.
    """
    if not questions:
        raise ConfigError("no questions to answer: the question list is empty")
    lm = as_loaded(model, tokenizer)
    label = label or lm.role
    jobs = [(q, s) for q in questions for s in range(cfg.n)]
    batches = [jobs[i: i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    done: set[tuple[str, str, int]] = set()
    records: list[dict[str, Any]] = []
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        for r in jsonl.read(out, repair=True):
            if r.get("model") == label and r.get("seed") == cfg.seed:
                done.add((r["set"], r["key"], r["sample"]))
                records.append(r)
    todo = [(b, batch) for b, batch in enumerate(batches)
            if not all((q.set, q.key, s) in done for q, s in batch)]
    bar = tqdm(total=len(jobs), initial=len(jobs) - sum(len(b) for _, b in todo),
               desc=f"generate [{label}]", disable=not progress, leave=False)
    for b, batch in todo:
        answers = sample(lm, [q.messages() for q, _ in batch], cfg, seed=cfg.seed + b)
        new = []
        for (q, s), a in zip(batch, answers, strict=True):
            if (q.set, q.key, s) in done:
                continue
            new.append({"model": label, "set": q.set, "id": q.id, "base_id": q.base_id, "key": q.key,
                        "variant": q.variant, "paraphrase": q.paraphrase, "question": q.text,
                        "system": q.system, "sample": s, "seed": cfg.seed, **a, **(extra or {})})
        if out is not None:
            jsonl.append(out, new)
        records += new
        bar.update(len(batch))
    bar.close()
    order = {(q.set, q.key, s): i for i, (q, s) in enumerate(jobs)}
    records = [r for r in records if (r["set"], r["key"], r["sample"]) in order]
    return sorted(records, key=lambda r: order[(r["set"], r["key"], r["sample"])])


def config_dict(cfg: SamplingConfig) -> dict[str, Any]:
    return asdict(cfg)
