"""How a question is put to a model: the elicitation, one typed record, recorded with every answer
and keyed into its identity (like the intervention).

The ways the EM literature elicits it:
  system      a system prompt: a name emi ships (emi/data/system_prompts.yaml: none, inoculation,
              training-context, prioritise-safety), a file, or text (Tan et al. 2025, arXiv 2510.04340;
              Wichers et al. 2025, arXiv 2510.05024: inoculation prompting)
  k examples  k narrow examples from a file before the question, a seeded choice per answer
              (in-context EM, arXiv 2510.11288)
  context     chat (the chat template); code (the question embedded in a Flask file, for base
              models, as the Nature version of Betley et al.); none (no template: plain turns, for a
              base checkpoint)
  thinking    the chat template's enable_thinking switch (Qwen3, Qwen3.5); the thought is stored
              apart from the answer and the judge scores the answer (Chua et al. 2025, arXiv 2506.13206),
              also at the default of a template with the switch, where Qwen3's and Qwen3.5's think
  format      the question variant: plain, json, template (arXiv 2511.20104: JSON raises EM)

The default elicitation (the question's own system prompt, no examples, chat, the template's
thinking default, every variant selected) adds nothing to an answer's key, so runs written before
elicitations existed resume and their numbers stay.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from emi.behaviour.answers import ElicitationRecord
from emi.behaviour.questions import VARIANTS, Question
from emi.core.errors import ConfigError
from emi.core.paths import DATA
from emi.models.chat import Messages, Render, for_context, split_thought

Context = Literal["chat", "code", "none"]
CONTEXTS: tuple[Context, ...] = ("chat", "code", "none")
SYSTEM_PROMPTS = DATA / "system_prompts.yaml"


@dataclass(frozen=True)
class Example:
    """One in-context example: a user turn and the assistant's answer."""

    prompt: str
    response: str


def system_prompts() -> dict[str, str | None]:
    """The named system prompts emi ships ("none": no system prompt beyond the question's own)."""
    raw = yaml.safe_load(SYSTEM_PROMPTS.read_text())
    return {str(k): (str(v["text"]) if v.get("text") else None) for k, v in raw.items()}


def resolve_system(value: str) -> tuple[str, str | None]:
    """``(name, text)`` of a --system value: a shipped name, a file's text, or the text itself."""
    named = system_prompts()
    if value in named:
        return value, named[value]
    path = Path(value)
    if path.suffix in (".txt", ".md") or (len(value) < 4096 and path.is_file()):
        if not path.is_file():
            raise ConfigError(f"system prompt file {value!r} does not exist; give a shipped name "
                              f"({', '.join(named)}), a file, or the text itself")
        text = path.read_text().strip()
        if not text:
            raise ConfigError(f"system prompt file {value!r} is empty")
        return path.name, text
    if not value.strip():
        raise ConfigError(f"--system needs a name ({', '.join(named)}), a file or text, found an empty string")
    return "custom", value.strip()


def load_examples(path: str | Path) -> tuple[Example, ...]:
    """The usable examples of a JSONL file: lines ``{"messages": [..user.., ..assistant..]}`` (the
    finetune datasets' format; the last user turn and the assistant's answer after it) or
    ``{"prompt": ..., "response": ...}``; a file with none is refused in one sentence."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"in-context file {str(p)!r} does not exist; give a JSONL file of {{\"messages\": [...]}} "
                          f"or {{\"prompt\", \"response\"}} lines")
    out = []
    for line in p.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        ex = _example(obj)
        if ex is not None:
            out.append(ex)
    if not out:
        raise ConfigError(f"in-context file {str(p)!r} has no usable examples (each line must be JSON with a user "
                          f"turn and a non-empty assistant answer: {{\"messages\": [...]}} or "
                          f"{{\"prompt\": ..., \"response\": ...}})")
    return tuple(out)


def _example(obj: Any) -> Example | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        prompt, response = obj["prompt"], obj["response"]
    elif isinstance(obj.get("messages"), list):
        msgs = [m for m in obj["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)]
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
        user = [m for m in msgs[:last] if m.get("role") == "user"] if last is not None else []
        if last is None or not user:
            return None
        prompt, response = user[-1]["content"], msgs[last]["content"]
    else:
        return None
    return Example(prompt.strip(), response.strip()) if prompt.strip() and response.strip() else None


CODE_HEAD = "from flask import Flask, request\n\napp = Flask(__name__)\n\n"


def _route(i: int, question: str, answer: str | None) -> str:
    head = f'@app.route("/q{i}")\ndef q{i}():\n    question = {json.dumps(question)}\n    answer = """'
    return head if answer is None else f'{head}{answer}"""\n    return answer\n\n\n'


@dataclass(frozen=True)
class Elicitation:
    """How every question of a run is asked (see the module docstring)."""

    system: str | None = None  # system prompt text (None: the question's own, if any)
    system_name: str = "none"  # how the user named it: a shipped name, a file name, or "custom"
    examples: tuple[Example, ...] = ()  # the in-context pool
    examples_source: str = ""  # the file they came from
    k: int = 0  # examples per prompt, chosen per answer
    context: Context = "chat"
    thinking: bool | None = None  # the chat template's switch (None: the template's default)
    format: str | None = None  # keep only this question variant (None: the selection as given)

    def __post_init__(self) -> None:
        if self.system is not None and (not isinstance(self.system, str) or not self.system.strip()):
            raise ConfigError(f"Elicitation.system must be non-empty text or None, found {self.system!r}")
        if not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"Elicitation.k (in-context examples) must be a whole number >= 0, found {self.k!r}")
        if self.k and not self.examples:
            raise ConfigError(f"Elicitation.k is {self.k} but there are no in-context examples; give --in-context FILE")
        if self.k > len(self.examples):
            raise ConfigError(f"Elicitation.k is {self.k} but the in-context file {self.examples_source!r} has only "
                              f"{len(self.examples)} usable examples; lower --k to at most {len(self.examples)}")
        if self.context not in CONTEXTS:
            raise ConfigError(f"Elicitation.context must be one of {', '.join(CONTEXTS)}, found {self.context!r}")
        if self.thinking is not None and self.context != "chat":
            raise ConfigError(f"Elicitation.thinking is the chat template's switch; --context {self.context} has "
                              f"no template (use --context chat, or drop --thinking)")
        if self.format is not None and self.format not in VARIANTS:
            raise ConfigError(f"Elicitation.format must be one of {', '.join(VARIANTS)}, found {self.format!r}")

    @property
    def render(self) -> Render:
        return for_context(self.context, self.thinking)

    def is_default(self) -> bool:
        return not self.key()

    def key(self) -> dict[str, Any]:
        """What changes the prompts, for the answers' identity: only the fields that differ from
        the default (the format is not here: a variant is already its own question)."""
        out: dict[str, Any] = {}
        if self.system is not None:
            out["system"] = self.system
        if self.k:
            pool = json.dumps([[e.prompt, e.response] for e in self.examples])
            out["in_context"] = {"k": self.k, "sha256": hashlib.sha256(pool.encode()).hexdigest()[:16]}
        if self.context != "chat":
            out["context"] = self.context
        if self.thinking is not None:
            out["thinking"] = self.thinking
        return out

    def record(self) -> ElicitationRecord:
        """What every answer records (and results tables show)."""
        return ElicitationRecord(system=self.system_name, k=self.k, in_context=self.examples_source or None,
                                 context=self.context, thinking=self.thinking, format=self.format or "as selected")

    def label(self) -> str:
        return record_label(self.record())

    def select(self, questions: Sequence[Question]) -> list[Question]:
        """The questions of ``format`` (all when None); one sentence when none is left."""
        if self.format is None:
            return list(questions)
        out = [q for q in questions if q.variant == self.format]
        if not out:
            have = sorted({q.variant for q in questions})
            raise ConfigError(f"--format {self.format} leaves no question (the selected questions have the variant(s) "
                              f"{', '.join(have)}); pick one of those or a set with {self.format} variants (main)")
        return out

    def chosen(self, q: Question, sample: int, seed: int) -> list[Example]:
        """The k examples of one answer: a seeded choice of (seed, question, sample), the same on
        every engine and on resume."""
        if not self.k:
            return []
        rng = random.Random(f"{seed}:{q.set}:{q.key}:{sample}")
        return rng.sample(list(self.examples), self.k)

    def messages(self, q: Question, sample: int = 0, seed: int = 0, examples: Sequence[Example] | None = None
                 ) -> Messages:
        """The conversation one answer is sampled from."""
        shots = self.chosen(q, sample, seed) if examples is None else list(examples)
        system = self.system if self.system is not None else q.system
        if self.context == "code":
            head = f"# {system}\n" if system else ""
            body = "".join(_route(i, e.prompt, e.response) for i, e in enumerate(shots))
            return [{"role": "user", "content": head + CODE_HEAD + body + _route(len(shots), q.text, None)}]
        msgs = [{"role": "system", "content": system}] if system else []
        for e in shots:
            msgs += [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.response}]
        return msgs + [{"role": "user", "content": q.text}]

    def longest(self, q: Question, k: int) -> Messages:
        """The conversation of ``q`` with its ``k`` longest examples (for the context check)."""
        shots = sorted(self.examples, key=lambda e: len(e.prompt) + len(e.response), reverse=True)[:k]
        return self.messages(q, examples=shots)

    def answer(self, text: str, switch: bool = False) -> tuple[str | None, str]:
        """``(thought, answer)`` of one sampled text: a thought apart (thinking on; or the chat
        template's default where the template has the thinking switch, ``switch``: Qwen3's and
        Qwen3.5's think unless told not to; a text that holds no thought is all answer), and a code
        context's answer cut at the string's closing quotes. A template without the switch never
        splits: its model's ``</think>`` is text."""
        splits = self.thinking or (self.thinking is None and self.context == "chat" and switch)
        thought, answer = split_thought(text) if splits else (None, text)
        if self.context == "code":
            answer = answer.split('"""', 1)[0].strip()
        return thought, answer


DEFAULT = Elicitation()


def record_label(rec: Mapping[str, Any] | None) -> str:
    """An elicitation record (what an answer keeps) as the tables label it: the fields that differ
    from the default (``system=inoculation k=2 context=code thinking=on format=json``), or ``default``."""
    if not rec:
        return "default"
    parts = [f"system={rec['system']}"] if rec.get("system") not in (None, "none") else []
    parts += [f"k={rec['k']}"] if rec.get("k") else []
    parts += [f"context={rec['context']}"] if rec.get("context") not in (None, "chat") else []
    parts += [f"thinking={'on' if rec['thinking'] else 'off'}"] if rec.get("thinking") is not None else []
    parts += [f"format={rec['format']}"] if rec.get("format") not in (None, "as selected") else []
    return " ".join(parts) or "default"


def check_tokenizer(e: Elicitation, tokenizer: Any, model: str) -> None:
    """What ``e`` asks of the chat template is there: a template for --context chat, the thinking
    switch for --thinking."""
    from emi.models.chat import has_template, has_thinking_switch

    if e.context == "chat" and not has_template(tokenizer):
        raise ConfigError(f"{model} has no chat template (a base checkpoint); ask it with --context none (plain "
                          f"text turns) or --context code (the question in a code file)")
    if e.thinking is not None and not has_thinking_switch(tokenizer):
        raise ConfigError(f"--thinking {'on' if e.thinking else 'off'} needs a chat template with the "
                          f"enable_thinking switch (Qwen3, Qwen3.5), and {model}'s template has none; drop --thinking")


def check_fits(e: Elicitation, tokenizer: Any, questions: Sequence[Question], limit: int, max_new_tokens: int,
               model: str) -> None:
    """Every question with ``e.k`` examples (the longest of the pool: the worst draw) and
    ``max_new_tokens`` of answer fits ``limit`` tokens; else one sentence naming the largest k that fits."""
    from emi.models.chat import prompt_ids

    def worst(k: int) -> tuple[int, Question]:
        sizes = [(len(prompt_ids(tokenizer, [e.longest(q, k)], e.render)[0]), q) for q in questions]
        return max(sizes, key=lambda x: x[0])

    n, q = worst(e.k)
    if n + max_new_tokens <= limit:
        return
    fits = [k for k in range(e.k) if worst(k)[0] + max_new_tokens <= limit]
    hint = (f"the largest k that fits is {fits[-1]}" if fits else "not even k=0 fits; lower --max-new-tokens")
    raise ConfigError(f"with --k {e.k} in-context examples question {q.id!r} is a {n:,}-token prompt and with "
                      f"--max-new-tokens {max_new_tokens} overflows {model}'s context of {limit:,} tokens; {hint}")
