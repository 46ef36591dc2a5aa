"""The pair's persona direction: a file, the kit's shipped one, or extracted on first use (model-diff,
contrast or mean-diff) with its source layer chosen, and cached beside the pair's other runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from emi.behaviour.sampling import SamplingConfig
from emi.core import locks
from emi.directions.direction import Direction, extract
from emi.judging.evaluation import evaluate
from emi.judging.judges import Judge
from emi.models.loading import ModelPair


def ensure_direction(pair: ModelPair, cache_dir: str | Path, method: str = "model-diff",
                     cfg: SamplingConfig | None = None, judge: Judge | None = None, progress: bool = True,
                     questions: str | None = None, extra_pairs: dict[str, list[tuple[str, str]]] | None = None,
                     log: Callable[[str], None] | None = None) -> Direction:
    """The pair's persona direction, extracted on first use and cached under ``cache_dir``
    (re-extracted when the cached one came from other checkpoints).

    Prompts: the kit's extraction questions (``questions`` overrides), disjoint from the
    evaluation questions. model-diff (default): finetuned minus base at the last prompt token,
    i.e. how the finetune moved the activation where the model decides which persona to voice.
    contrast: evil minus helpful persona (the kit's contrast prompts) at the same token. mean-diff:
    misaligned minus aligned answers of the finetuned model over response tokens (the published
    recipe). The source layer: where option pairs exist for the prompts, the one whose ablation most
    lowers the finetuned model's log-prob preference for misaligned answers; otherwise the one whose
    ablation brings the finetuned model's next-token distribution closest to the base's. The
    direction's meta records the prompts, the criterion and its table.
    """
    from emi.activations.capture import capture_models, capture_pair
    from emi.activations.plan import CaptureSpec
    from emi.behaviour.logprob import option_pairs
    from emi.behaviour.questions import load_questions
    from emi.directions.contrast import contrast_items
    from emi.directions.selection import (
        AblationScore,
        RestorationScore,
        next_token_logprobs,
        select_layer_by_ablation,
        select_layer_by_restoration,
    )

    say = log or (lambda _m: None)
    kit = pair.spec.kit
    cache_dir = Path(cache_dir)
    path = cache_dir / "direction.safetensors"
    identity = _spec_identity(pair)
    qset = questions or kit.extract_questions
    if path.is_file():
        d = Direction.load(path)
        if d.meta.get("pair_identity") in (None, identity) and d.meta.get("extract_questions", qset) == qset:
            return d
        say(f"{path} was extracted from other checkpoints or prompts; extracting again")
    qs = load_questions(qset)
    overwrite = True
    if method == "model-diff":
        prompts = [{"messages": q.messages() + [{"role": "assistant", "content": ""}], "id": q.id, "key": q.key}
                   for q in qs]
        store = capture_pair(pair, ("base", "finetuned"), prompts, cache_dir / "store",
                             CaptureSpec(positions="last_prompt"), progress=progress, overwrite=overwrite)
        ex = extract(store, "model-diff", "last_prompt", holdout=0.0, min_count=2)
    elif method == "contrast":
        items = contrast_items(qs, kit, per_question=kit.contrast_per_question)
        store = capture_models({"finetuned": pair.finetuned}, items, cache_dir / "store",
                               CaptureSpec(positions="last_prompt"), progress=progress, overwrite=overwrite)
        ex = extract(store, "contrast", "last_prompt", role="finetuned", min_count=2)
    elif method == "mean-diff":
        if cfg is None or judge is None:
            raise ValueError("mean-diff needs sampling settings and a judge")
        _, judged = evaluate(pair.finetuned, qs, cfg, judge, cache_dir / "answers", progress=progress)
        store = capture_models({"finetuned": pair.finetuned}, judged, cache_dir / "store",
                               CaptureSpec(positions="response"), progress=progress, overwrite=overwrite)
        ex = extract(store, "mean-diff", "response", role="finetuned")
    else:
        raise ValueError(f"unknown method {method!r}")
    d = ex.direction
    pairs = option_pairs(qs, extra=extra_pairs, required=False)
    table: list[AblationScore] | list[RestorationScore]
    if pairs:
        best, table = select_layer_by_ablation(pair.finetuned, d, pairs)
        how = ("lowest log-prob P(misaligned) of the finetuned model under ablation, on option pairs of the "
               f"{qset} questions")
    else:
        messages = [q.messages() for q in qs]
        base_lp = next_token_logprobs(pair.base, messages)
        best, table = select_layer_by_restoration(pair.finetuned, base_lp, d, messages)
        how = (f"no option pairs for the {qset} questions: the layer whose ablation brings the finetuned model's "
               f"first-answer-token distribution closest to the base's (KL)")
    d.choose_layer(best, how)
    d.meta.update(layer_selection=table, extract_questions=qset, pair_identity=identity, pair=pair.spec.name)
    d.save(path)
    return d


def _spec_identity(pair: ModelPair) -> dict[str, Any]:
    """The pair's identity without loading it: each role's checkpoint and weights fingerprint."""
    from emi.models.loading import fingerprint, locate

    out: dict[str, Any] = {}
    for role in ("base", "finetuned"):
        spec = getattr(pair.spec, role)
        where = locate(spec.id, spec.revision)[1]
        out[role] = fingerprint(where) or where
    return out


def pair_direction(pair: ModelPair, path: str | None = None, method: str = "model-diff",
                   cfg: SamplingConfig | None = None, judge: Judge | None = None, root: str | Path | None = None,
                   questions: str | None = None, extra_pairs: dict[str, list[tuple[str, str]]] | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[Direction, str]:
    """The direction a steer run uses, and a sentence saying where it came from: a file, the pair's
    shipped one (model-diff on the kit's own prompts), or extracted on first use and cached under
    ``root/<pair>-<method>`` (``root`` defaults to ``activations/``)."""
    kit = pair.spec.kit
    if path:
        d = Direction.load(path)
        src = f"{path} ({d.meta.get('method')}, layer {d.layer_label()})"
    elif kit.direction and method == "model-diff" and questions in (None, kit.extract_questions):
        d = Direction.load(kit.direction)
        src = f"the pair's shipped {d.meta.get('method')} direction ({kit.direction}), layer {d.layer_label()}"
    else:
        cache = Path(root or "activations") / f"{pair.spec.name}-{method}"
        with locks.exclusive(cache):  # two runs extracting the same direction: the second waits its turn
            d = ensure_direction(pair, cache, method, cfg, judge, questions=questions, extra_pairs=extra_pairs,
                                 log=log)
        src = (f"{method} on the {d.meta.get('extract_questions')} questions, cached in {cache}; layer "
               f"{d.layer_label()} chosen by {d.meta.get('selection')}")
    d.check_fits(pair.base.d_model, pair.base.n_layers, f"pair {pair.spec.name!r}")
    return d, src


