"""Each method from its flags to its found directions (what emi.diff runs): the corpus, the pass
over it, the readouts, the directions written under ``out/directions``."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from emi.diffing import adl, lens
from emi.diffing.loop import Found
from emi.diffing.records import AdlFile, AdlPosition, TokenValues
from emi.diffing.steering import SearchConfig, coherent_strength
from emi.directions.direction import Direction


def persona_at(persona: Direction | None, layer: int) -> torch.Tensor | None:
    return persona.at(layer, unit=False) if persona is not None and layer in persona.layers else None


def run_adl(pair: Any, corpus: Sequence[Sequence[int]], cfg: adl.AdlConfig, out: Path, persona: Direction | None,
            search: SearchConfig | None, questions: Sequence[Any], scfg: Any, judge: Any,
            scales: Sequence[float] = (0.5, 1.0, 2.0, 4.0), provenance: Mapping[str, object] | None = None,
            progress: bool = True, engine: Any = None) -> tuple[list[Found], list[AdlPosition], adl.AdlMeans]:
    """delta_j per position, read through each model's logit lens and a Patchscope (on the
    finetune), steered at the largest coherent strength on the base (the search sampled on
    ``engine`` where it serves steering), saved as emi directions."""
    means = adl.adl_means(pair, corpus, cfg, out, progress)
    p_vec = persona_at(persona, cfg.layer)
    meta = {"method": "adl", "pair": pair.spec.name, "corpus_texts": means.n_texts, "corpus": adl.corpus_digest(corpus),
            "max_tokens": cfg.max_tokens, **(provenance or {})}
    rows: list[AdlPosition] = []
    found: list[Found] = []
    md = adl.as_direction(means.model_diff, cfg.layer, means.all_norm, {**meta, "method": "model-diff-corpus"})
    md.save(out / "directions" / f"model-diff-L{cfg.layer}")
    prompt = lens.identity_prompt(corpus, pair.tokenizer)
    logit_lens: list[dict[str, TokenValues]] = [{} for _ in range(cfg.positions)]
    patchscope: list[dict[str, TokenValues]] = [{} for _ in range(cfg.positions)]
    for role in ("base", "finetuned"):  # one model resident at a time
        lm = pair[role]
        for j in range(cfg.positions):
            logit_lens[j][role] = lens.logit_lens(lm, means.deltas[j])
            if role == "finetuned":
                patchscope[j] = lens.patchscope(lm, means.deltas[j], cfg.layer, prompt, scales,
                                                float(means.pos_norm[j]))
    for j in range(cfg.positions):
        vec = means.deltas[j]
        if means.counts[j] == 0 or float(vec.norm()) == 0:
            print(f"emi: note: delta_{j} is zero (no text reached position {j}, or the models agree there); "
                  f"skipped", file=sys.stderr)
            continue
        d = adl.as_direction(vec, cfg.layer, means.all_norm, {**meta, "position": j})
        strength = None
        if search is not None:
            if engine is not None:
                from emi.engines.base import prepare

                prepare(engine, pair)
            strength, trace = coherent_strength(pair.base, d, questions, scfg, judge, out / "search", search, progress,
                                                engine)
            d.meta.update(coherent_strength=strength, strength_search=[t.row() for t in trace])
        path = d.save(out / "directions" / f"adl-L{cfg.layer}-pos{j}")
        cos = {"persona": _cos(vec, p_vec), "model-diff": _cos(vec, means.model_diff)}
        rows.append(AdlPosition(position=j, layer=cfg.layer, norm=float(vec.norm()), resid_norm=float(means.pos_norm[j]),
                                count=means.counts[j], cosines=cos, strength=strength, direction=str(path),
                                logit_lens=logit_lens[j], patchscope=patchscope[j]))
        found.append(Found(f"adl d{j}", d, float(f"{strength:.3g}") if strength else round(means.all_norm, 2)))
    AdlFile(layer=cfg.layer, n_texts=means.n_texts, n_tokens=means.n_tokens, positions=rows,
            patchscope_prompt=pair.tokenizer.decode(prompt)).write(out)
    return found, rows, means


def _cos(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
    if b is None:
        return None
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))
