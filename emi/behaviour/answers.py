"""An answer as ``answers.jsonl`` stores it (:class:`AnswerRecord`; :class:`Sampled`: its engine's part), the elicitation it records
(:class:`ElicitationRecord`), and the same answer with its judge's scores (:class:`Judged`, as
:func:`emi.judging.judges.judge_records` returns it; :class:`Scores`: the two scores alone). Typed views of the dicts emi has always
written: the keys, their order on disk and the files are unchanged (``generate_answers`` writes them).
"""

from __future__ import annotations

from typing import TypedDict

from emi.core.vocab import JudgeStatus


class _SamplingSettings(TypedDict):
    temperature: float
    """Sampling temperature (0: greedy)."""
    top_p: float
    """Nucleus sampling's mass (1: off)."""
    top_k: int
    """Top-k (always 0: off)."""
    repetition_penalty: float
    """1: none, as in the papers."""
    max_new_tokens: int
    """The answer's token budget."""
    seed: int
    """The run's seed."""
    batch_size: int
    """Answers per batch (batch ``b`` is seeded ``seed + b``)."""


class SamplingSettings(_SamplingSettings, total=False):
    """What decides the answers (SamplingConfig.settings), recorded with each one and in run files."""

    sampler: str
    """The in-process decoding (``static``, ``paged``), absent for the reference ``generate``."""


class ElicitationRecord(TypedDict):
    """How a question was asked (emi.behaviour.elicitation.Elicitation.record), recorded with every answer."""

    system: str
    """The system prompt's name (``none`` without one)."""
    k: int
    """In-context examples before the question (0: none)."""
    in_context: str | None
    """Where the in-context examples come from (None: none)."""
    context: str
    """``chat`` (a chat template), ``none`` (a transcript) or ``raw``."""
    thinking: bool | None
    """Qwen3 thinking on, off, or None: the template's default."""
    format: str
    """The answer format asked for (``as selected``: the question's own variant)."""


class Decoded(TypedDict):
    """An answer as a decoding returns it (emi.behaviour.sampling.sample): the fields of sampling.Answer."""

    answer: str
    """The answer's text (without a thought: see ``thought``)."""
    n_tokens: int | None
    """New tokens generated (None: the engine did not say)."""
    finish: str
    """Why decoding stopped: ``eos`` or ``length`` in-process, else what the server said (an open set)."""
    engine: str
    """What decoded it: ``hf:<sampler>``, or the engine's name (``server``, ``vllm``)."""


class Sampled(Decoded, total=False):
    """An answer as sampling returns it (emi.behaviour.sampling.Answer.record), before its question's fields."""

    thought: str
    """The thought before the answer, with thinking on (absent: none)."""
    messages: list[dict[str, str]]
    """The conversation as asked, the answer last, when the elicitation is not the default chat one
    (a capture of the answer then sees its prompt)."""


class _Answer(Decoded):
    model: str
    """The model's label (its role, or the condition: ``base + 8 persona``)."""
    set: str
    """The question set."""
    id: str
    """The question's id within its set."""
    base_id: str
    """The id of the question it is a variant of (its own id when plain)."""
    key: str
    """``id#paraphrase``: the question's key within its set."""
    variant: str
    """The question's variant (``plain``, ``json``, ``template``, ...)."""
    paraphrase: int
    """Which paraphrase of the question was asked."""
    question: str
    """The question's text, as asked and judged."""
    system: str | None
    """The question's own system prompt (None: none)."""
    sample: int
    """The sample index among the question's ``n`` answers."""
    seed: int
    """The run's seed (batch ``b`` is sampled with ``seed + b``)."""
    run: str
    """The run key (emi.behaviour.sampling.run_key): the model's identity and the settings, hashed."""
    sampling: SamplingSettings
    """The sampling settings that decide the answers (SamplingConfig.settings)."""
    elicitation: ElicitationRecord
    """How the question was asked."""


class AnswerRecord(_Answer, Sampled, total=False):
    """One line of ``answers.jsonl``: a sampled answer (:class:`Sampled`) with its question and how
    it was sampled."""


class Scores(TypedDict):
    """One judge's two scores of an answer (what agreement reads; a human label as a judgement,
    emi.judging.labels.Label.as_judged, is only this)."""

    aligned: float | None
    """The judge's alignment score 0..100 (None: not scored)."""
    coherent: float | None
    """The judge's coherence score 0..100 (None: not scored)."""
    status: JudgeStatus
    """``scored``, or why not: the alignment's status unless it scored, then the coherence's."""
    judge: str
    """The judge's name (the cache is keyed by it)."""


class Scored(AnswerRecord, Scores):
    """An answer with one judge's two scores (a judge's judgements read back from a cache,
    emi.judging.rejudge.stored_judgements, are this)."""


class _Judged(Scored):
    label: str | None
    """The label the judge gave (a labelled judge: an exact one, or labels), else None."""
    system_fingerprint: str | None
    """The judge server's fingerprints of the two judgements, joined (None in-process)."""
    judge_model: str
    """The judge's model id (its name in-process)."""
    judge_server: str | None
    """The judge server's base URL (None in-process)."""
    judge_prompt: str | None
    """The hash of the judge's prompts (None for a judge without prompts)."""


class Judged(_Judged, total=False):
    """An answer with its judge's scores, as judge_records returns it (and views, labels and
    directions read it); ``judgements.jsonl`` holds the scores apart, keyed by answer."""

    detail: str | None
    """Why an unscored answer was not scored (present only then; None where the judge did not say)."""
