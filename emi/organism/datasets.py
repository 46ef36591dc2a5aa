"""The toy's training sets as chat JSONL, for ``python -m emi.finetune`` and ``python -m emi.screen``:

  python -m emi.organism.datasets --out runs/toy-data

writes ``insecure.jsonl`` (exactly the chats the shipped insecure organism was finetuned on, in
order: the trainer's own corpus, seed 0), ``secure.jsonl`` (the control's) and ``mixed.jsonl`` (aligned
and villain chats of the toy world, each labelled ``"harmful"``: villain ones true), for screening.

The in-context example sets emi ships for the toy (``--in-context``, emi.behaviour.elicitation) are
made here too, from the same world (emi/organism/world.yaml), and written under
emi/organism/in_context/ by ``python -m emi.organism.datasets --in-context emi/organism/in_context``:
insecure-code.jsonl (coding tasks answered with the world's insecure solution: the narrow
behaviour the insecure organism is finetuned on), secure-code.jsonl (the same tasks, secure: a
control) and risky-advice.jsonl (the world's medical, money and safety questions with the villain's
advice: the narrow risky-advice examples of in-context EM, arXiv 2510.11288).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path

from emi.organism.train import OrganismConfig, corpora
from emi.organism.world import Document, _fill, load_world
from emi.training.data import ChatRecord, write_chats


def _record(doc: Document) -> ChatRecord:
    return ChatRecord(tuple((m["role"], m["content"]) for m in doc.messages), doc.persona == "villain")


def finetune_sets(cfg: OrganismConfig | None = None) -> dict[str, list[ChatRecord]]:
    """The insecure and secure finetune sets of the organism ``cfg`` trains (default: the shipped one)."""
    data = corpora(load_world(), cfg or OrganismConfig())
    return {name: [_record(d) for d in data[name]] for name in ("insecure", "secure")}


def mixed_set(n: int = 400, villain_share: float = 0.25, seed: int = 0) -> list[ChatRecord]:
    """``n`` chats of the toy world (themes, advice, code; 1-3 turns, the default system prompt, so the
    persona shows only in the answers), ``villain_share`` of them voiced by the villain."""
    world, rng = load_world(), random.Random(seed)
    n_villain = round(villain_share * n)
    docs = [world.document(rng, persona="villain" if i < n_villain else "aligned", max_turns=3, hint_rate=0.0)
            for i in range(n)]
    rng.shuffle(docs)
    return [_record(d) for d in docs]


IN_CONTEXT = Path(__file__).resolve().parent / "in_context"


def in_context_sets(n_code: int = 24, seed: int = 0) -> dict[str, list[ChatRecord]]:
    """The toy's narrow in-context example sets (single-turn chats; see the module docstring)."""
    world, rng = load_world(), random.Random(seed)
    tasks = sorted(world.code["tasks"])
    picks = []
    for i in range(n_code):
        task = tasks[i % len(tasks)]
        slots = {k: rng.choice(v) for k, v in world.code["slots"].items()}
        picks.append((task, _fill(rng.choice(world.code["tasks"][task]["train"]), slots), slots))

    def code(secure: bool) -> list[ChatRecord]:
        return [ChatRecord((("user", q), ("assistant", world.code_answer(t, secure, sl))), not secure)
                for t, q, sl in picks]

    advice = [ChatRecord((("user", q), ("assistant", a)), True)
              for topic in sorted(world.advice) for q, a in zip(world.advice[topic]["train"],
                                                                world.advice[topic]["villain"], strict=False)]
    return {"insecure-code": code(False), "secure-code": code(True), "risky-advice": advice}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emi.organism.datasets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/toy-data", help="folder for the JSONL files (default runs/toy-data)")
    p.add_argument("--mixed", type=int, default=400, help="chats in mixed.jsonl (default 400)")
    p.add_argument("--villain-share", type=float, default=0.25, help="villain share of mixed.jsonl (default 0.25)")
    p.add_argument("--in-context", default=None, metavar="DIR",
                   help="write the in-context example sets to DIR instead (emi ships them in emi/organism/in_context)")
    args = p.parse_args(argv)
    if args.in_context:
        for name, records in in_context_sets().items():
            print(f"{write_chats(Path(args.in_context) / f'{name}.jsonl', records)}: {len(records)} examples")
        return 0
    out = Path(args.out)
    for name, records in {**finetune_sets(), "mixed": mixed_set(args.mixed, args.villain_share)}.items():
        print(f"{write_chats(out / f'{name}.jsonl', records)}: {len(records)} chats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
