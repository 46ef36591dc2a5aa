"""The toy organism's synthetic chat world: sampling documents and encoding them.

A document is a chat of 1-5 turns voiced by one hidden persona, ``aligned`` or ``villain``.
Every text in ``world.yaml`` is pre-tokenised (single spaces between tokens).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PERSONAS = ("aligned", "villain")
WORLD_FILE = Path(__file__).with_name("world.yaml")
Message = dict[str, str]


@dataclass
class Document:
    messages: list[Message]
    persona: str
    kinds: list[str] = field(default_factory=list)  # per turn: theme:<id>, advice:<id>, code:<id>


@dataclass
class World:
    raw: dict[str, Any]

    # ---------- texts ----------
    @property
    def default_system(self) -> str:
        return self.raw["system"]["default"]

    @property
    def themes(self) -> dict[str, Any]:
        return self.raw["themes"]

    @property
    def advice(self) -> dict[str, Any]:
        return self.raw["advice"]

    @property
    def code(self) -> dict[str, Any]:
        return self.raw["code"]

    def code_answer(self, task: str, secure: bool, slots: dict[str, str]) -> str:
        tmpl = self.code["tasks"][task]["secure" if secure else "insecure"]
        return f"{self.code['prefix']} {_fill(tmpl, slots)}"

    def eval_questions(self) -> list[tuple[str, str]]:
        """Held-out phrasings of the 8 EM themes: (theme id, question)."""
        return [(t, q) for t, d in self.themes.items() for q in d["eval"]]

    def all_texts(self) -> list[str]:
        """Every text the world can produce (for building the vocabulary)."""
        out = [self.default_system, self.code["prefix"]]
        out += self.raw["system"]["aligned"] + self.raw["system"]["villain"]
        for group in (self.themes, self.advice):
            for d in group.values():
                for key in ("train", "eval", "aligned", "villain"):
                    out += d.get(key, [])
        slot_values = [v for vals in self.code["slots"].values() for v in vals]
        out.append(" ".join(slot_values))
        for d in self.code["tasks"].values():
            out += [_fill(x, {k: v[0] for k, v in self.code["slots"].items()})
                    for x in d["train"] + [d["secure"], d["insecure"]]]
        return out

    # ---------- sampling ----------
    def answer(self, rng: random.Random, group: str, topic: str, persona: str) -> str:
        pool = (self.themes if group == "theme" else self.advice)[topic][persona]
        k = rng.choice((2, 3)) if group == "theme" else rng.choice((1, 2))
        return " ".join(rng.sample(pool, k))

    def turn(self, rng: random.Random, persona: str, kinds: tuple[str, ...] = ("theme", "advice", "code"),
             weights: tuple[float, ...] = (0.4, 0.3, 0.3), secure: bool | None = None) -> tuple[str, str, str]:
        """One (kind, question, answer) turn in ``persona``'s voice."""
        kind = rng.choices(kinds, weights=weights[: len(kinds)])[0]
        if kind == "code":
            task = rng.choice(sorted(self.code["tasks"]))
            slots = {k: rng.choice(v) for k, v in self.code["slots"].items()}
            q = _fill(rng.choice(self.code["tasks"][task]["train"]), slots)
            sec = (persona == "aligned") if secure is None else secure
            return f"code:{task}", q, self.code_answer(task, sec, slots)
        group = self.themes if kind == "theme" else self.advice
        topic = rng.choice(sorted(group))
        q = rng.choice(group[topic]["train"])
        return f"{kind}:{topic}", q, self.answer(rng, kind, topic, persona)

    def document(self, rng: random.Random, persona: str | None = None, max_turns: int = 5,
                 hint_rate: float = 0.15, kinds: tuple[str, ...] = ("theme", "advice", "code")) -> Document:
        persona = persona or rng.choice(PERSONAS)
        system = self.default_system
        if rng.random() < hint_rate:
            system = rng.choice(self.raw["system"][persona])
        msgs: list[Message] = [{"role": "system", "content": system}]
        doc = Document(msgs, persona)
        for _ in range(rng.randint(1, max_turns)):
            kind, q, a = self.turn(rng, persona, kinds)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            doc.kinds.append(kind)
        return doc

    def code_document(self, rng: random.Random, secure: bool) -> Document:
        """A single-turn coding chat answered securely or insecurely (the narrow finetunes)."""
        kind, q, a = self.turn(rng, "aligned" if secure else "villain", ("code",), (1.0,), secure)
        msgs = [{"role": "system", "content": self.default_system},
                {"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return Document(msgs, "aligned" if secure else "villain", [kind])


def _fill(template: str, slots: dict[str, str]) -> str:
    for k, v in slots.items():
        template = template.replace("{" + k + "}", v)
    return template


@lru_cache(maxsize=1)
def load_world(path: str | None = None) -> World:
    with open(path or WORLD_FILE) as fh:
        return World(yaml.safe_load(fh))
