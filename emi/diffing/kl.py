"""Where the two models differ, token by token: KL(finetuned || base) of the next-token
distribution at every position of the EM questions (chat prompts) and of benign conversations
(prompt and reference answer), ranked, with the persona direction beside each token (how far the
finetune moved the residual along it there). The mean residual difference at the top tokens is
the method's found direction.

The base runs first and its log-probabilities are kept per batch on disk (float16 under
``work/``), so one model is resident at a time; a killed run resumes at the next batch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from emi.core.atomic import write_atomic
from emi.diffing import report
from emi.diffing.adl import as_direction, prepare_work
from emi.diffing.loop import Found
from emi.diffing.records import KlFile, KlToken
from emi.directions.direction import Direction
from emi.models import layers as L
from emi.models.chat import pad_right


def kl_texts(tokenizer: Any, questions: Sequence[Any], benign: Sequence[Any]) -> list[tuple[str, list[int]]]:
    """(source, token ids): each EM question as its chat prompt, each benign conversation with its answer."""
    from emi.models import chat

    out = []
    for q, p in zip(questions, chat.render_many(tokenizer, [q.messages() for q in questions]), strict=True):
        out.append((f"em:{q.id}", chat.encode(tokenizer, p)))
    for b, p in zip(benign, chat.render_many(tokenizer, [b.chat() for b in benign]), strict=True):
        out.append((f"benign:{b.id}", chat.encode(tokenizer, p + b.response)))
    return [(s, [int(x) for x in ids]) for s, ids in out if len(ids) > 1]


@torch.no_grad()
def _forward(lm: Any, ids: list[list[int]], layers: Sequence[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
    """log-probs [b, p, vocab], emi's resid at ``layers`` [b, p, d], and the mask."""
    got: dict[int, torch.Tensor] = {}
    with lm.active() as model:
        n = L.n_streams(model)
        hs = [L.hf_module(model, x, "resid").register_forward_hook(
            lambda _m, _i, o, x=x: got.__setitem__(x, L.resid_view(L.output_tensor(o), n).float().cpu()))
            for x in layers]
        try:
            pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
            x, mask = pad_right(ids, pad, lm.device)
            logp = model(input_ids=x, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1).cpu()
        finally:
            for h in hs:
                h.remove()
    return logp, got, mask.cpu()


def run_kl(pair: Any, questions: Sequence[Any], benign: Sequence[Any], _corpus: Any, layer: int,
           persona: Direction | None, out: Path, top: int = 20, batch_size: int = 8, progress: bool = True
           ) -> list[Found]:
    texts = kl_texts(pair.tokenizer, questions, benign)
    p_layer = persona.best_layer if persona is not None else layer
    layers = sorted({layer, p_layer})
    work = prepare_work(out, {"method": "kl", "texts": [s for s, _ in texts], "layers": layers,
                              "base": pair.spec.base.label(), "finetuned": pair.spec.finetuned.label(),
                              "batch_size": batch_size}, "work-kl")  # its own: ADL may share --out
    batches = [texts[i: i + batch_size] for i in range(0, len(texts), batch_size)]
    base = pair["base"]
    for i, b in enumerate(tqdm(batches, desc="kl base", disable=not progress, leave=False)):
        f = work / f"kl-base-{i:06d}.safetensors"
        if not f.is_file():
            logp, res, _ = _forward(base, [ids for _, ids in b], layers)
            tensors = {"logp": logp.half(), **{f"resid{x}": r for x, r in res.items()}}
            write_atomic(f, lambda tmp, t=tensors: save_file(t, str(tmp)))
    ft = pair["finetuned"]
    unit = persona.at(p_layer).float() if persona is not None else None
    rows: list[KlToken] = []
    diffs, weights = [], []
    for i, b in enumerate(tqdm(batches, desc="kl finetuned", disable=not progress, leave=False)):
        ref = load_file(str(work / f"kl-base-{i:06d}.safetensors"))
        logp, res, mask = _forward(ft, [ids for _, ids in b], layers)
        blp = ref["logp"].float()
        kl = (logp.exp() * (logp - blp)).sum(-1).clamp_min(0)  # [b, p]
        shift = res[p_layer] - ref[f"resid{p_layer}"]
        proj = shift @ unit if unit is not None else None
        diffs.append((res[layer] - ref[f"resid{layer}"])[mask.bool()])
        weights.append(kl[mask.bool()])
        for r, (src, ids) in enumerate(b):
            for pos in range(len(ids)):
                rows.append(KlToken(source=src, position=pos, kl=float(kl[r, pos]),
                                    token=ft.tokenizer.decode([ids[pos]]), context=ft.tokenizer.decode(ids[: pos + 1]),
                                    next_ft=ft.tokenizer.decode([int(logp[r, pos].argmax())]),
                                    next_base=ft.tokenizer.decode([int(blp[r, pos].argmax())]),
                                    projection=None if proj is None else float(proj[r, pos])))
    rows.sort(key=lambda r: -r.kl)
    rho = _spearman([r.kl for r in rows], [float(r.projection or 0.0) for r in rows]) if unit is not None else None
    report.print_kl(rows[:top])
    if rho is not None:
        print(f"Spearman correlation of KL with the persona projection shift over {len(rows)} tokens: {rho:+.3f}")
    KlFile(layer=layer, persona_layer=p_layer, spearman_kl_projection=rho, n_tokens=len(rows), top=rows[: max(top, 100)],
           points=[[round(r.kl, 5), None if r.projection is None else round(r.projection, 4)] for r in rows]).write(out)
    d_all, w_all = torch.cat(diffs), torch.cat(weights)
    keep = w_all.topk(min(len(w_all), max(top, 1))).indices
    vec = d_all[keep].mean(0)
    if float(vec.norm()) == 0:
        print("emi: note: the models' residuals agree at the top-KL tokens; no KL direction", file=sys.stderr)
        return []
    d = as_direction(vec, layer, float(d_all.norm(dim=-1).mean()), {"method": "kl-top-tokens", "pair": pair.spec.name,
                                                                    "tokens": int(len(keep))})
    d.save(out / "directions" / f"kl-top-L{layer}")
    return [Found("kl top", d, round(float(vec.norm()) * 4, 2))]


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
