"""ADL's tokens/s against a plain forward over the same text (ratio, same run), and the
crosscoder's training samples/s. CPU by default; `--device cuda` when a GPU is lent.

    python bench/diff_speed.py [--pair toy] [--device cpu] [--repeat 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from emi.diffing import adl, corpus
    from emi.diffing.crosscoder import train
    from emi.models.chat import pad_right
    from emi.models.loading import load_pair
    from emi.models.registry import default_pair, get_pair

    p = argparse.ArgumentParser()
    p.add_argument("--pair", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=4)
    a = p.parse_args()
    spec = get_pair(a.pair) if a.pair else default_pair()
    pair = load_pair(spec, device=a.device, resident="all")
    ids = corpus.tokenize(corpus.default_texts(spec.kit) * a.repeat, pair.tokenizer, 128)
    n_tok = sum(len(x) for x in ids)
    layer = pair.base.n_layers // 2
    cfg = adl.AdlConfig(layer, 5, 128, 32)
    with torch.no_grad():
        t0 = time.perf_counter()
        for role in ("base", "finetuned"):
            lm = pair[role]
            for i in range(0, len(ids), 32):
                x, m = pad_right(ids[i: i + 32], lm.tokenizer.pad_token_id or 0, lm.device)
                lm.model(input_ids=x, attention_mask=m, use_cache=False)
        plain = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        adl.adl_means(pair, ids, cfg, Path(tmp), progress=False)
        lens = time.perf_counter() - t0
    print(f"ADL {2 * n_tok / lens:,.0f} tokens/s vs plain forward {2 * n_tok / plain:,.0f} tokens/s "
          f"(ratio {plain / lens:.2f}; {len(ids)} texts, {n_tok} tokens per model, device {a.device})")

    class Store:
        d_model = pair.base.d_model

        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(4096, 2, self.d_model, generator=g)

        def iter_shards(self, role: str, layer: int):  # noqa: ANN201
            yield self.x[:, 0 if role == "base" else 1], {"row.text": torch.zeros(4096, dtype=torch.long)}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(Store(), layer, Path(tmp), 8, 16, 50, 512, 1e-3, 0, progress=False)
        dt = time.perf_counter() - t0
    print(f"crosscoder training {50 * 512 / dt:,.0f} samples/s (d_model {Store.d_model}, 8x latents, k 16, batch 512)")


if __name__ == "__main__":
    main()
