"""nnsight generation with emi's interventions (kept in a real file: nnsight reads trace bodies from source)."""

from __future__ import annotations

import torch

from emi.interventions import nnsight_edits


def nnsight_generate(nn_model, enc, new: int, direction, kind: str, layer: int) -> None:  # noqa: ANN001
    n = len(nn_model.model.layers)
    with torch.no_grad(), nn_model.generate(dict(enc), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                            pad_token_id=nn_model.tokenizer.pad_token_id) as tracer:
        for _ in tracer.iter[:new]:
            if kind == "steer":
                nnsight_edits.nnsight_steer(nn_model, direction, 4.0, [layer])
            else:
                nnsight_edits.nnsight_ablate(nn_model, direction, n, source_layer=layer)
