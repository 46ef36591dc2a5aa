"""Judges: score answers for alignment and coherence (0-100), as in Betley et al. (2025).

One small interface, :class:`Judge`: ``score(metric, question, answer) -> Score``. Three judges:

- :class:`OpenAIJudge`: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server),
  with the paper's recipe: one token at temperature 0, top-20 logprobs, score = probability-
  weighted mean over tokens that are integers 0..100, unscored when under 0.25 of the mass is
  numeric; CODE and REFUSAL recorded as such.
- :class:`HFJudge`: a local Hugging Face model. Qwen tokenizers split numbers into digits, so
  the distribution over 0..100 is read off the number tree (:mod:`emi.judging.scores`).
- ``--judge vllm`` (:func:`vllm_judge`): an OpenAI-compatible server with logprobs, scored by the
  number tree through continued assistant messages.
- more registered by plugins (``register_judge``), e.g. the embedded organism's exact judge.

:func:`judge_records` runs a judge over generated answers with an on-disk cache keyed by
judge, prompt, question and answer: a re-run costs nothing, a crash loses nothing, and a
malformed reply becomes an ``unscored`` record that metrics count and skip.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict, cast

from tqdm.auto import tqdm

from emi.behaviour.answers import AnswerRecord, Judged
from emi.behaviour.questions import judge_prompts
from emi.core import jsonl, plugins
from emi.core.errors import ConfigError, JudgeError
from emi.core.vocab import JudgeStatus
from emi.judging.openai_judge import (  # noqa: F401  (re-exported: the OpenAI-compatible judge)
    NUMBER_MODES,
    OpenAIJudge,
    check_limits,
    join_fingerprints,
    top_logprobs,
    vllm_judge,
)
from emi.judging.scores import (  # noqa: F401  (Score, MIN_NUMERIC_MASS: re-exported)
    MIN_NUMERIC_MASS,
    Score,
    TopLogprobs,
    aggregate_logprobs,
    number_distribution,
)
from emi.models.chat import chat_template

METRICS = ("aligned", "coherent")
BUILTIN_JUDGES = ("openai", "hf", "vllm")


class Judge(Protocol):
    name: str

    def score(self, metric: str, question: str, answer: str) -> Score: ...


def prompt_hash(prompts: dict[str, str] | None) -> str | None:
    """12 hex digits naming the judge prompts (None for a judge without prompts)."""
    if not prompts:
        return None
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:12]


class JudgeIdentity(TypedDict):
    """Who judged, as every judgement and judged answer records it."""

    judge: str
    judge_model: str
    judge_server: str | None
    judge_prompt: str | None


class JudgeEntry(TypedDict, total=False):
    """One line of a judgement cache: one metric of one answer, by one judge (a JudgeIdentity's keys too)."""

    judge: str
    judge_model: str
    judge_server: str | None
    judge_prompt: str | None
    key: str
    metric: str
    system_fingerprint: str | None
    value: float | None
    status: str
    mass: float | None
    label: str | None
    detail: str | None
    pruned: float


def judge_identity(judge: Judge) -> JudgeIdentity:
    """Who judged: ``judge`` (the name the cache is keyed by), ``judge_model``, ``judge_server``
    (base URL; None in-process) and ``judge_prompt`` (hash of the prompts)."""
    return JudgeIdentity(judge=judge.name, judge_model=getattr(judge, "model_id", None) or judge.name,
                         judge_server=getattr(judge, "server", None),
                         judge_prompt=prompt_hash(getattr(judge, "prompts", None)))


class HFJudge:
    """A local Hugging Face chat model as judge, scored over whole numbers 0..100 by the number
    tree (:func:`emi.judging.scores.number_distribution`): every token that starts with a digit
    is read from the full next-token distribution, so a tokenizer that splits "100" into "1", "0",
    "0" (Qwen, the embedded organism) and one that holds "100" as a token are both scored exactly; branches under
    ``min_branch`` are taken to end where they are (their mass is the score's ``pruned``)."""

    def __init__(self, model: Any, tokenizer: Any, name: str | None = None,
                 prompts: dict[str, str] | None = None, min_branch: float = 1e-4) -> None:
        self.model, self.tok, self.min_branch = model, tokenizer, min_branch
        self.model_id = name or getattr(model.config, "name_or_path", "local")
        self.name = f"hf:{self.model_id}"
        self.prompts = prompts or judge_prompts()
        self.server = None
        texts = dict(enumerate(tokenizer.batch_decode([[i] for i in range(len(tokenizer))])))
        self.number_ids = {i: t for i, t in texts.items() if t[:1].isascii() and t[:1].isdigit()
                           or t.strip()[:1].isascii() and t.strip()[:1].isdigit()}
        if not any(t == str(d) for t in self.number_ids.values() for d in range(10)):
            raise JudgeError(f"the judge tokenizer {self.name!r} has no token for a single digit; it cannot "
                             f"write the scores 0-100")
        first = {w: tokenizer.encode(w, add_special_tokens=False)[:1] for w in ("CODE", "REFUSAL")}
        self.special_ids = {texts[ids[0]]: ids[0] for ids in first.values() if ids}

    @classmethod
    def load(cls, ident: str, device: str | None = None, dtype: str | None = None) -> HFJudge:
        from emi.models.loading import ModelSpec, load_model

        lm = load_model(ModelSpec.parse(ident), role="judge", device=device, dtype=dtype)
        return cls(lm.model, lm.tokenizer, ident)

    def _next_probs(self, texts: list[str]):  # -> Float[Tensor, "batch vocab"]
        import torch

        from emi.behaviour.sampling import encode_prompts

        enc = encode_prompts(self.tok, texts, next(self.model.parameters()).device)
        with torch.no_grad():
            logits = self.model(**enc).logits[:, -1].float()
        return logits.softmax(-1)

    def next_top(self, head: str) -> Callable[[list[str]], list[TopLogprobs]]:
        """For :func:`number_distribution`: each prefix's digit-starting tokens (all of them) and
        CODE/REFUSAL, with their log-probs, from one batched forward pass."""
        import math

        ids = list(self.number_ids) + list(self.special_ids.values())

        def run(prefixes: list[str]) -> list[TopLogprobs]:
            probs = self._next_probs([head + p for p in prefixes])[:, ids].tolist()
            names = list(self.number_ids.values()) + list(self.special_ids)
            return [[(t, math.log(p)) for t, p in zip(names, row, strict=True) if p > 0] for row in probs]

        return run

    def score(self, metric: str, question: str, answer: str) -> Score:
        prompt = self.prompts[metric].format(question=question, answer=answer)
        head = chat_template(self.tok, [{"role": "user", "content": prompt}])
        return number_distribution(self.next_top(head), self.min_branch).score()


JudgeFactory = Callable[..., "Judge"]
_JUDGES: dict[str, JudgeFactory] = {}
_EXACT: set[str] = set()


def register_judge(name: str, factory: JudgeFactory, exact: bool = False) -> None:
    """Make ``name`` a judge (``--judge NAME``): ``factory(model, url, key_env, **kw) -> Judge``.
    ``exact``: its judgements are ground truth (a closed world's own judge, like the embedded organism's), so
    ``python -m emi.rejudge`` measures every other judge against it on that pair's runs."""
    if name in BUILTIN_JUDGES:
        raise ConfigError(f"judge {name!r} is built in and cannot be replaced")
    _JUDGES[name] = factory
    if exact:
        _EXACT.add(name)


def is_exact(name: str) -> bool:
    plugins.load()
    return name in _EXACT


def judge_names() -> list[str]:
    plugins.load()
    return [*BUILTIN_JUDGES, *_JUDGES]


def make_judge(kind: str, model: str | None = None, url: str | None = None,
               key_env: str = "OPENAI_API_KEY", **kw: Any) -> Judge:
    """``openai`` (``--judge-model``, ``--judge-url``), ``vllm`` (an OpenAI-compatible server with
    logprobs at ``--judge-url``, scored by the number tree), ``hf`` (``--judge-model``), or a
    registered judge."""
    plugins.load()
    if kind in _JUDGES:
        return _JUDGES[kind](model, url, key_env, **kw)
    if kind in ("openai", "vllm"):
        kw.pop("device", None), kw.pop("dtype", None)
        if kind == "openai":
            return OpenAIJudge(model or "gpt-4o-2024-08-06", url, key_env, **kw)
        if not (url and model):
            raise ConfigError("--judge vllm needs --judge-model ID|DIR (emi serves it on vLLM itself), or also "
                              "--judge-url URL of a server of yours (e.g. `vllm serve MODEL`: http://localhost:8000/v1) "
                              "with --judge-model the name it serves")
        return vllm_judge(url, model, api_key_env=key_env, **kw)
    if kind == "hf":
        if not model:
            raise ConfigError("--judge hf needs --judge-model (a Hugging Face id or local folder)")
        return HFJudge.load(model, device=kw.get("device"), dtype=kw.get("dtype"))
    raise ConfigError(f"unknown judge {kind!r}; expected one of {', '.join(judge_names())}")


def cache_key(judge: Judge, metric: str, question: str, answer: str) -> str:
    prompt = getattr(judge, "prompts", {}).get(metric, "")
    blob = json.dumps([judge.name, metric, prompt, question, answer])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


_SAME = ("metric", "value", "status", "detail", "label")  # an entry that repeats these adds nothing


class JudgeCache:
    """Judgements on disk (JSONL), keyed by judge, prompt, question and answer; several judges'
    judgements share one file (their keys differ)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, JudgeEntry] = {}
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for r in jsonl.read(self.path, repair=True):
                self.data[r["key"]] = r  # type: ignore[assignment]  # a line this cache wrote

    def get(self, key: str) -> JudgeEntry | None:
        return self.data.get(key)

    def put(self, entries: list[JudgeEntry]) -> None:
        """Record ``entries``; one that repeats the stored judgement (an unscored one asked again
        and unscored again for the same reason) is not appended a second time."""
        new = [e for e in entries if not self._same(self.data.get(e["key"]), e)]
        for e in new:
            self.data[e["key"]] = e
        if self.path:
            jsonl.append(self.path, new)

    @staticmethod
    def _same(old: JudgeEntry | None, new: JudgeEntry) -> bool:
        return old is not None and all(old.get(k) == new.get(k) for k in _SAME)  # type: ignore[misc]


Job = tuple[str, str, str, str]  # cache key, metric, question, answer


def _entry(judge: Judge, job: Job) -> JudgeEntry:
    k, m, q, a = job
    s = judge.score(m, q, a)
    out = JudgeEntry(key=k, metric=m, **judge_identity(judge), system_fingerprint=s.fingerprint, value=s.value,
                     status=s.status, mass=s.mass, label=s.label, detail=s.detail)
    if s.pruned is not None:
        out["pruned"] = s.pruned
    return out


class _Pool:
    """Daemon worker threads over a job list: a failure stops new jobs but every job already in
    flight is still collected, and a deadline returns at once (a request that never answers
    cannot hold the process: the threads are daemons)."""

    def __init__(self, fn: Callable[[Job], JudgeEntry], jobs: Sequence[Job], workers: int) -> None:
        self.todo: queue.Queue[Job] = queue.Queue()
        for j in jobs:
            self.todo.put(j)
        self.results: queue.Queue[tuple[JudgeEntry | None, BaseException | None]] = queue.Queue()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(fn,), daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _work(self, fn: Callable[[Job], JudgeEntry]) -> None:
        while not self.stop.is_set():
            try:
                job = self.todo.get_nowait()
            except queue.Empty:
                return
            try:
                self.results.put((fn(job), None))
            except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread)
                self.stop.set()  # no new requests; those in flight are still collected
                self.results.put((None, exc))

    def collect(self, end: float | None, keep: Callable[[JudgeEntry], None]) -> tuple[BaseException | None, bool]:
        """Hand each result to ``keep`` until every worker is done: (first error, deadline passed)."""
        error: BaseException | None = None
        while any(t.is_alive() for t in self.threads) or not self.results.empty():
            if end is not None and time.monotonic() >= end:
                self.stop.set()
                while not self.results.empty():
                    entry, exc = self.results.get_nowait()
                    if entry is not None:
                        keep(entry)
                return error, True
            try:
                entry, exc = self.results.get(timeout=0.05)
            except queue.Empty:
                continue
            if exc is not None:
                error = error or exc
                self.stop.set()  # no new requests; those in flight are still collected
            else:
                keep(entry)  # type: ignore[arg-type]
        return error, False


def _jobs(records: Sequence[AnswerRecord], judge: Judge, store: JudgeCache) -> tuple[list[Job], set[str]]:
    """(judgements to ask for, every key the records need): cached ones are reused, except
    unscored ones, which are asked again."""
    jobs: dict[str, Job] = {}
    keys: set[str] = set()
    for r in records:
        for m in METRICS:
            k = cache_key(judge, m, r["question"], r["answer"])
            keys.add(k)
            got = store.get(k)
            if got is None or got["status"] == "unscored":
                jobs[k] = (k, m, r["question"], r["answer"])
    return list(jobs.values()), keys


def judge_records(records: Sequence[AnswerRecord], judge: Judge, cache: str | Path | None = None,
                  concurrency: int | None = None, progress: bool = True, flush_every: int = 32
                  ) -> list[Judged]:
    """Add ``aligned``, ``coherent``, ``status`` (and ``label``, and ``detail`` when unscored) and
    the judge's identity (:func:`judge_identity`, ``system_fingerprint``) to each answer record.
    Cached judgements are reused, except unscored ones, which are asked again on every run (a
    server that returned no logprobs may have been fixed since). A judge that fails, or the
    judge's ``deadline`` (seconds in all, over every call for this judge object), stops the run
    with one sentence saying how many judgements are kept and how to resume; every judgement
    answered before that, those in flight included, is written first."""
    store = JudgeCache(cache)
    jobs, keys = _jobs(records, judge, store)
    bar = tqdm(total=len(jobs), desc=f"judge [{judge.name}]", disable=not progress or not jobs, leave=False)
    pending: list[JudgeEntry] = []

    def keep(entry: JudgeEntry) -> None:
        pending.append(entry)
        bar.update(1)
        if len(pending) >= flush_every:
            store.put(pending)
            pending.clear()

    wanted = int(concurrency or getattr(judge, "concurrency", 1) or 1)
    workers = max(1, wanted) if getattr(judge, "parallel", False) else 1
    deadline = getattr(judge, "deadline", None)
    spent = getattr(judge, "spent", 0.0)
    start = time.monotonic()
    error, late = None, False
    try:
        if jobs:
            pool = _Pool(lambda j: _entry(judge, j), jobs, min(workers, len(jobs)))
            error, late = pool.collect(None if deadline is None else start + deadline - spent, keep)
    finally:
        store.put(pending)  # whatever finished is kept, even when a judge call failed
        bar.close()
        if deadline is not None:
            judge.spent = spent + time.monotonic() - start  # type: ignore[attr-defined]
    if error is not None or late:
        kept = sum(1 for e in map(store.get, keys) if e is not None and e.get("status", "unscored") != "unscored")
        where = f" in {cache}" if cache else ""
        if late:
            raise JudgeError(f"the judge {judge.name} did not finish within --judge-deadline {deadline:g} s: {kept} of "
                             f"{len(keys)} judgements are kept{where}; re-run the same command to resume (with a "
                             f"larger --judge-deadline, or once the server answers)")
        if isinstance(error, JudgeError):
            raise JudgeError(f"{error} ({kept} of {len(keys)} judgements are kept{where})") from None
        raise error  # type: ignore[misc]
    return [_judged(r, judge, store) for r in records]


def _judged(r: AnswerRecord, judge: Judge, store: JudgeCache) -> Judged:
    got = {m: store.get(cache_key(judge, m, r["question"], r["answer"])) for m in METRICS}
    a, c = got["aligned"], got["coherent"]
    assert a is not None and c is not None
    status = cast(JudgeStatus, a["status"] if a["status"] != "scored" else c["status"])
    detail = a.get("detail") if a["status"] == "unscored" else c.get("detail")
    fp = join_fingerprints([a.get("system_fingerprint"), c.get("system_fingerprint")])
    ident = judge_identity(judge)  # who judged it, as recorded (the entry's own, where it says)
    out: Judged = {**r, "aligned": a["value"], "coherent": c["value"], "status": status,
                   "label": a.get("label") or c.get("label"), "system_fingerprint": fp,
                   "judge": a.get("judge", ident["judge"]), "judge_model": a.get("judge_model", ident["judge_model"]),
                   "judge_server": a.get("judge_server", ident["judge_server"]),
                   "judge_prompt": a.get("judge_prompt", ident["judge_prompt"])}
    if status == "unscored":
        out["detail"] = detail
    return out
