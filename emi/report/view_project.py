"""The direction on every token: each answer's per-token residual projection on the run's
direction at its layer, read through one model of the run's pair (loaded once), cached beside the
run in projections.jsonl (one line per answer; a re-run computes only the answers it lacks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emi.core.errors import ConfigError
from emi.report.view_data import PROJECTIONS, _read_jsonl, answer_id, read_answers

BATCH = 16


def _plan(run: Path, role: str, direction: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """(model spec, direction, provenance) from the run's run.json, checked before any weights load."""
    from emi.directions.direction import Direction
    from emi.models.specs import ModelSpec

    notes: list[str] = []
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    pair = meta.get("pair")
    if not isinstance(pair, dict) or not isinstance(pair.get(role), dict) or not pair[role].get("id"):
        raise ConfigError(f"{run}/run.json records no {role} model (a steer run's does): --project needs the run of "
                          f"python -m emi.steer or trajectory with its run.json{'; ' + notes[0] if notes else ''}")
    m = pair[role]
    spec = ModelSpec(m["id"], m.get("revision"), m.get("adapter"))
    recorded = meta.get("direction") or {}
    if direction is None:
        from emi.models.registry import all_pairs

        kit = all_pairs().get(str(pair.get("pair")))
        direction = kit.kit.direction if kit is not None else None
        if direction is None:
            raise ConfigError(f"{run} does not say where its direction file is; pass --direction FILE (the one the "
                              f"run used)")
    if not Path(direction).is_file():
        raise ConfigError(f"--direction {direction} does not exist")
    d = Direction.load(direction)
    if recorded.get("fingerprint") and recorded["fingerprint"] != d.fingerprint():
        raise ConfigError(f"{direction} is not the run's direction (fingerprint {d.fingerprint()}, the run records "
                          f"{recorded['fingerprint']}); pass the run's --direction FILE")
    return spec, d, meta


def _tokens(tokenizer: Any, text: str, ids: list[int]) -> list[str]:
    """The answer's tokens as pieces of its text (offsets of a fast tokenizer; else each decoded)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == ids:
            spans, pieces, prev = enc["offset_mapping"], [], 0
            for s, e in spans:
                pieces.append(text[prev:e] if e > prev else text[s:e])
                prev = max(prev, e)
            return pieces
    except (TypeError, ValueError, NotImplementedError, KeyError):
        pass
    return [tokenizer.decode([i]) for i in ids]


def project_runs(run: Path, role: str = "finetuned", layer: int | None = None, direction: str | None = None,
                 device: str | None = None) -> tuple[int, int]:
    """Project the run's answers not yet in its projections.jsonl; (answers projected, answers)."""
    import torch

    from emi.activations.plan import captures_thought, prepare_texts
    from emi.activations.readers import hf_reader
    from emi.core import jsonl
    from emi.directions.direction import project
    from emi.models.chat import pad_right
    from emi.models.loading import load_model

    spec, d, _ = _plan(run, role, direction)
    layer = d.best_layer if layer is None else layer
    if layer not in d.layers:
        raise ConfigError(f"the direction has no vector at layer {layer} (it has {d.layers}); pass --layer among those")
    answers = read_answers(run / "answers.jsonl", []) if (run / "answers.jsonl").is_file() else []
    cache = run / PROJECTIONS
    thinking = {answer_id(a) for a in answers if captures_thought(a)}
    key = {"layer": layer, "direction": d.fingerprint(), "role": role}
    # an answer with a thought is projected with the thought in front of it ("thought": True; a line from
    # before thoughts were captured, without it, is projected again)
    done = {r["id"] for r in _read_jsonl(cache, []) if all(r.get(k) == v for k, v in key.items())
            and not (r.get("thought") is not True and r["id"] in thinking)} if cache.is_file() else set()
    todo = [a for a in answers if answer_id(a) not in done and isinstance(a.get("answer"), str)]
    if not todo:
        return len(done), len(answers)
    model = load_model(spec, role=role, device=device)
    read = hf_reader(model.model, [layer])
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(todo), BATCH), desc=f"project [{role}] @ layer {layer}"):
        chunk = todo[start:start + BATCH]
        texts = prepare_texts(chunk, model.tokenizer)
        ids, mask = pad_right([t.ids for t in texts], pad, model.device)
        with torch.no_grad():
            acts = read(ids, mask)[("resid", layer)]
        proj = project(acts, d, layer).cpu()
        lines = []
        for a, t, p in zip(chunk, texts, proj, strict=True):
            s, e = t.response or (0, len(t.ids))
            lines.append({"id": answer_id(a), **key, **({"thought": True} if t.thought else {}),
                          "tokens": _tokens(model.tokenizer, a["answer"], t.ids[s:e]),
                          "proj": [round(float(x), 4) for x in p[s:e]]})
        jsonl.append(cache, lines)  # each batch kept: a killed run resumes from here
    return len(done) + len(todo), len(answers)
