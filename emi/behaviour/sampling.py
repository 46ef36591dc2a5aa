"""Batched sampling of answers from any loaded model, resumable through a JSONL file.

Runs unchanged inside any intervention (emi.interventions.hooks): it only calls the model's ``generate``.
Determinism: batch ``b`` is sampled after ``torch.manual_seed(seed + b)``, and batches are
fixed by the question order, so the same seed gives the same answers and a resumed run
reproduces the uninterrupted one.

Sampling is exactly what :class:`SamplingConfig` says: every setting that changes the next-token
distribution is passed to ``generate`` explicitly, so a checkpoint's own ``generation_config.json``
(Qwen2.5-Instruct ships repetition_penalty 1.05, top_k 20, top_p 0.8, temperature 0.7) never
leaks in. The settings are recorded with every answer.

Answers are keyed by who made them: each record carries a ``run`` key, a hash of the model's
identity (checkpoint, revision, adapter, weights fingerprint, dtype), the intervention applied and
the sampling settings. A resumed run reuses only answers with its own key, so a folder shared by
two models, two directions or two settings never mixes their answers.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from tqdm.auto import tqdm

from emi.behaviour.answers import AnswerRecord, Decoded, Sampled, SamplingSettings
from emi.behaviour.elicitation import DEFAULT, Elicitation
from emi.behaviour.questions import Question
from emi.core import jsonl
from emi.core.errors import ConfigError
from emi.models import chat
from emi.models.chat import CHAT, Render, has_thinking_switch
from emi.models.loading import LoadedModel, as_loaded


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 10  # samples per question
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 32
    repetition_penalty: float = 1.0  # 1 = none, as in the papers; never the checkpoint's own
    sampler: str = "generate"  # in-process decoding: generate | static | paged (see SAMPLERS)
    compile: bool | None = None  # static: torch.compile the decode step (None: on CUDA only)
    elicitation: Elicitation = DEFAULT  # how each question is asked (keyed apart: see generate_answers)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if self.n < 1:
            raise ConfigError(f"SamplingConfig.n (samples per question) must be >= 1, found {self.n}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"SamplingConfig.temperature must be finite and >= 0, found {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"SamplingConfig.top_p must be in (0, 1], found {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("SamplingConfig.max_new_tokens and batch_size must be >= 1")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ConfigError(f"SamplingConfig.repetition_penalty must be > 0, found {self.repetition_penalty}")
        if not isinstance(self.elicitation, Elicitation):
            raise ConfigError(f"SamplingConfig.elicitation must be an Elicitation, found {type(self.elicitation).__name__}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Everything ``generate`` needs to sample exactly as configured: each processor a
        checkpoint's generation config could switch on is set to its neutral value."""
        neutral: dict[str, Any] = dict(repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=0,
                                       min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                                       encoder_repetition_penalty=1.0, min_length=0,
                                       bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
                                       sequence_bias=None, num_beams=1, renormalize_logits=False,
                                       max_new_tokens=self.max_new_tokens)
        if self.temperature > 0:
            return dict(neutral, do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)
        return dict(neutral, do_sample=False, temperature=None, top_p=None, top_k=None)

    def settings(self) -> SamplingSettings:
        """What decides the answers (recorded with each one): all but ``n``, ``compile`` and the
        elicitation (recorded and keyed on its own). The sampler is recorded when it is not the
        reference ``generate`` (so answers written before samplers existed keep their key)."""
        s: SamplingSettings = {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0,
                               "repetition_penalty": self.repetition_penalty, "max_new_tokens": self.max_new_tokens,
                               "seed": self.seed, "batch_size": self.batch_size}
        if self.sampler != "generate":
            s["sampler"] = self.sampler
        return s


# In-process decoding. All three run the model's own modules, so every emi hook applies.
SAMPLERS = {
    "generate": "Hugging Face generate with a dynamic KV cache: the reference",
    "static": "generate with a static KV cache; on CUDA the decode step is compiled (torch.compile, "
              "CUDA graphs); same answers as generate for the same seed (greedy: exactly)",
    "paged": "continuous batching with paged attention (transformers generate_batch): finished rows "
             "leave the batch, no padding; steering only at all positions",
}


def check_positions(cfg: SamplingConfig, positions: str) -> None:
    """The paged sampler's rule, in one place: it packs prompts and answers into one sequence, so
    it cannot steer the prompt or the generated tokens alone."""
    if cfg.sampler == "paged" and positions != "all":
        raise ConfigError(f"--sampler paged steers at all positions only (its packed batches do not say which "
                          f"tokens are the prompt); drop --positions {positions} or use --sampler static")


Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Answer:
    """One sampled answer, as every engine returns it."""

    answer: str
    n_tokens: int | None  # new tokens (None: the engine did not say)
    finish: str  # eos | length | what the server said
    engine: str = ""  # what decoded it, where the engine says (hf:generate, hf:static, ...); else the engine's name

    def record(self) -> Sampled:
        return cast(Sampled, asdict(self))


class Engine(Protocol):
    """Where answers are sampled: one answer per conversation, in input order. ``name`` is what
    results and answer lines record (in-process | server | vllm). An engine with an ``in_flight``
    attribute (requests it keeps in flight) is sent that many answers' worth of batches at once."""

    @property
    def name(self) -> str: ...

    def answer(self, messages: Sequence[Messages], cfg: SamplingConfig, seed: int, render: Render = CHAT
               ) -> list[Answer]: ...


@dataclass(frozen=True)
class InProcess:
    """The model in emi's own process (``cfg.sampler`` decodes), with every hook applied to it."""

    model: LoadedModel
    name: str = "in-process"

    def answer(self, messages: Sequence[Messages], cfg: SamplingConfig, seed: int, render: Render = CHAT
               ) -> list[Answer]:
        return [Answer(**a) for a in sample(self.model, messages, cfg, seed=seed, render=render)]


def run_key(identity: Mapping[str, Any] | None, cfg: SamplingConfig) -> str:
    """Who and how: the hash that keys answers (model identity, intervention, sampling settings, and
    the elicitation where it is not the default: a default run's key is what it was before)."""
    ident = dict(identity or {})
    if not cfg.elicitation.is_default():
        ident = {**ident, "elicitation": cfg.elicitation.key()}
    blob = json.dumps({"identity": ident, "sampling": cfg.settings()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render_prompts(tokenizer: Any, messages: Sequence[list[dict[str, str]]], render: Render = CHAT) -> list[str]:
    """Each conversation as prompt text, ready for the assistant's answer (emi.models.chat.render)."""
    return chat.render_many(tokenizer, messages, render)


def encode_prompts(tokenizer: Any, prompts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded batch (so every row's next token is at the last position)."""
    return chat.pad_left(chat.encode_many(tokenizer, prompts), tokenizer.pad_token_id, device)


def _generate(hf: Any, tok: Any, ids: list[list[int]], cfg: SamplingConfig, device: torch.device) -> list[list[int]]:
    enc = chat.pad_left(ids, tok.pad_token_id, device)
    kwargs: dict[str, Any] = dict(cfg.generate_kwargs(), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if cfg.sampler == "static":
        from transformers.generation import CompileConfig

        kwargs["cache_implementation"] = "static"
        if cfg.compile is False:
            kwargs["disable_compile"] = True
        elif cfg.compile:  # also off CUDA, where transformers would not compile by itself
            cc: Any = CompileConfig()
            cc._compile_all_devices = True
            kwargs["compile_config"] = cc
    out = hf.generate(**enc, **kwargs)
    return out[:, enc["input_ids"].shape[1]:].tolist()


def paged_config(config_class: Any, page: int, blocks: int, max_batch_tokens: int) -> Any:
    """transformers' ContinuousBatchingConfig for pages of ``page`` tokens: its field is ``page_size``
    in the pinned transformers (5.23) and ``block_size`` in earlier 5.x (e.g. 5.17, what a GPU
    machine may have); read from its signature."""
    import inspect

    params = inspect.signature(config_class).parameters
    size = next((n for n in ("page_size", "block_size") if n in params), None)
    if size is None:
        raise ConfigError("the paged sampler needs transformers' ContinuousBatchingConfig with page_size or "
                          "block_size, which this transformers lacks; use --sampler generate")
    return config_class(**{size: page}, num_blocks=blocks, max_batch_tokens=max_batch_tokens)


def _generate_paged(hf: Any, tok: Any, ids: list[list[int]], cfg: SamplingConfig) -> list[list[int]]:
    from transformers import GenerationConfig
    from transformers.generation import ContinuousBatchingConfig

    from emi.models import layers

    if layers.linear_layers(hf):
        raise ConfigError(f"the paged sampler does not run linear-attention layers ({layers.check_architecture(hf)}; "
                          f"transformers' continuous batching pages only attention caches); use --sampler static "
                          f"or generate")
    gc = GenerationConfig(**cfg.generate_kwargs(), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    # Size the paged KV cache for this batch (left to itself, transformers sizes it from free
    # device memory at every call: seconds per batch, tens on CPU).
    page = 256
    blocks = sum(-(-(len(i) + cfg.max_new_tokens) // page) for i in ids) + 1
    cb = paged_config(ContinuousBatchingConfig, page, blocks,
                      max(max(len(i) for i in ids), min(sum(len(i) for i in ids), 8192)))
    out = hf.generate_batch(ids, generation_config=gc, continuous_batching_config=cb, progress_bar=False)
    rows = [out.get(f"req_{i}") for i in range(len(ids))]
    failed = [r for r in rows if r is None or r.error]
    if failed:
        raise ConfigError(f"the paged sampler failed on {len(failed)} of {len(ids)} prompts "
                          f"({failed[0].error if failed[0] else 'no output'}); use --sampler generate")
    return [list(r.generated_tokens) for r in rows]  # type: ignore[union-attr]


@torch.no_grad()
def sample_ids(model: LoadedModel | torch.nn.Module, messages: Sequence[list[dict[str, str]]],
               cfg: SamplingConfig, tokenizer: Any = None, seed: int | None = None, render: Render = CHAT
               ) -> list[list[int]]:
    """The new token ids of one answer per conversation, in input order, decoded by ``cfg.sampler``
    (generate pads finished rows: callers cut at the first EOS). The prompts are
    :func:`emi.models.chat.prompt_ids` of ``render``: what an engine is sent."""
    lm = as_loaded(model, tokenizer)
    tok = lm.tokenizer
    with lm.active() as m:
        ids = chat.prompt_ids(tok, messages, render)
        if seed is not None:
            torch.manual_seed(seed)
        hf: Any = m  # a transformers model: generate() is not visible to nn.Module typing
        if cfg.sampler == "paged":
            return _generate_paged(hf, tok, ids, cfg)
        return _generate(hf, tok, ids, cfg, lm.device)


def sample(model: LoadedModel | torch.nn.Module, messages: Sequence[list[dict[str, str]]],
           cfg: SamplingConfig, tokenizer: Any = None, seed: int | None = None, render: Render = CHAT
           ) -> list[Decoded]:
    """Answer each conversation once: [{"answer", "n_tokens", "finish", "engine"}] in input order
    (``engine``: which decoding made the answer, ``hf:<sampler>``; a server's answers say ``server``)."""
    tok = as_loaded(model, tokenizer).tokenizer
    results: list[Decoded] = []
    for ids in sample_ids(model, messages, cfg, tokenizer, seed, render):
        finish = "length"
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
            finish = "eos"
        ids = [i for i in ids if i != tok.pad_token_id]
        results.append({"answer": tok.decode(ids, skip_special_tokens=True).strip(),
                        "n_tokens": len(ids), "finish": finish, "engine": f"hf:{cfg.sampler}"})
    return results


def generate_answers(model: LoadedModel | torch.nn.Module, questions: Sequence[Question],
                     cfg: SamplingConfig = SamplingConfig(), out: str | Path | None = None,
                     tokenizer: Any = None, label: str | None = None, progress: bool = True,
                     extra: Mapping[str, Any] | None = None, identity: Mapping[str, Any] | None = None,
                     engine: Engine | None = None) -> list[AnswerRecord]:
    """Sample ``cfg.n`` answers per question; append them to ``out`` (JSONL) batch by batch.

    With ``out`` already holding a part of the same run (same label and :func:`run_key` of
    ``identity`` and ``cfg``), only the missing batches are sampled. ``identity`` defaults to the
    model's own. Records carry the question fields, the sample index, the model label, the seed,
    the sampling settings, the run key and the engine's name. ``engine`` samples each batch
    (:class:`Engine`; default :class:`InProcess`: ``cfg.sampler`` on the model in this process).
    ``cfg.elicitation`` says how each question is asked (emi.behaviour.elicitation); it is recorded with
    every answer and, when not the default, keyed into the run (a thought, with thinking on, is
    recorded apart from the answer).
    """
    if not questions:
        raise ConfigError("no questions to answer: the question list is empty")
    elicitation = cfg.elicitation
    questions = elicitation.select(questions)
    lm = as_loaded(model, tokenizer)
    eng: Engine = engine or InProcess(lm)
    label = label or lm.role
    run = run_key(identity if identity is not None else lm.identity(), cfg)
    jobs = [(q, s) for q in questions for s in range(cfg.n)]
    batches = [jobs[i: i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    done: set[tuple[str, str, int]] = set()
    records: list[AnswerRecord] = []
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        for r in jsonl.read(out, repair=True):
            ident = (r.get("set"), r.get("key"), r.get("sample"))
            if r.get("model") == label and r.get("run") == run and ident not in done:  # duplicates never count
                done.add(ident)  # type: ignore[arg-type]
                records.append(cast(AnswerRecord, r))
    todo = [(b, batch) for b, batch in enumerate(batches)
            if not all((q.set, q.key, s) in done for q, s in batch)]
    failed = threading.Event()  # once a batch fails, no other starts (a dead server is not restarted)
    switch = has_thinking_switch(lm.tokenizer)  # its default thinks (Qwen3, Qwen3.5): a thought is kept apart

    def answer(item: tuple[int, list[tuple[Question, int]]]) -> list[Answer]:
        b, batch = item
        if failed.is_set():
            raise RuntimeError("not sampled: an earlier batch failed")
        try:
            msgs = [elicitation.messages(q, s, cfg.seed) for q, s in batch]
            if elicitation.render == CHAT:  # the engines' own signature before elicitations
                return eng.answer(msgs, cfg, cfg.seed + b)
            return eng.answer(msgs, cfg, cfg.seed + b, render=elicitation.render)
        except BaseException:
            failed.set()
            raise

    # an engine that keeps many requests in flight (vLLM: 256) gets several batches at once; a batch
    # stays the unit of seeding and of resuming, and batches are written in order
    at_once = max(1, int(getattr(eng, "in_flight", 0)) // cfg.batch_size)
    pool = ThreadPoolExecutor(at_once) if at_once > 1 else None
    # closed (and, leave=False, erased) on an error too, so an error message starts its own line
    with tqdm(total=len(jobs), initial=len(jobs) - sum(len(b) for _, b in todo),
              desc=f"generate [{label}]", disable=not progress, leave=False) as bar:
        try:
            for (_, batch), got in zip(todo, pool.map(answer, todo) if pool else map(answer, todo), strict=True):
                new: list[AnswerRecord] = []
                for (q, s), a in zip(batch, [x.record() for x in got], strict=True):
                    if (q.set, q.key, s) in done:
                        continue
                    thought, a["answer"] = elicitation.answer(a["answer"], switch)
                    if thought is not None:
                        a["thought"] = thought
                    if not elicitation.is_default():
                        # the conversation as asked, so a capture of this answer sees its prompt
                        a["messages"] = [*elicitation.messages(q, s, cfg.seed),
                                         {"role": "assistant", "content": a["answer"]}]
                    rec: AnswerRecord = {
                        "model": label, "set": q.set, "id": q.id, "base_id": q.base_id, "key": q.key,
                        "variant": q.variant, "paraphrase": q.paraphrase, "question": q.text,
                        "system": q.system, "sample": s, "seed": cfg.seed, **a, "run": run,
                        "sampling": cfg.settings(), "engine": a["engine"] or eng.name,
                        "elicitation": elicitation.record()}
                    new.append(cast(AnswerRecord, {**rec, **extra}) if extra else rec)
                if out is not None:
                    jsonl.append(out, new)
                records += new
                bar.update(len(batch))
        finally:
            if pool is not None:  # on an error, batches not yet started never start
                pool.shutdown(wait=False, cancel_futures=True)
    order = {(q.set, q.key, s): i for i, (q, s) in enumerate(jobs)}
    records = [r for r in records if (r["set"], r["key"], r["sample"]) in order]
    return sorted(records, key=lambda r: order[(r["set"], r["key"], r["sample"])])
