"""Mean-difference directions on synthetic stores: recovery of a planted direction, streaming
equals in-memory, clear count errors, artifacts round-trip."""

import numpy as np
import pytest
import torch

from emi.activations.store import StoreWriter
from emi.core.errors import ConfigError, DirectionError
from emi.directions.direction import Direction, auroc, cosine_matrix, extract, random_like

D, LAYERS = 32, 3


def synthetic_store(path, n_texts=240, rows_per_text=6, shard_texts=50, seed=0, strength=5.0, planted=None):
    """Texts judged misaligned carry +strength * planted[layer] on their response rows."""
    g = torch.Generator().manual_seed(seed)
    planted = planted if planted is not None else torch.nn.functional.normalize(torch.randn(LAYERS, D, generator=g), dim=-1)
    texts = []
    for i in range(n_texts):
        mis = i % 3 == 0
        texts.append({"id": f"q{i % 8}", "sample": i, "aligned": 5.0 if mis else 95.0, "coherent": 90.0})
    spec = {"roles": ["finetuned", "base"], "layers": list(range(LAYERS)), "sites": ["resid"], "positions": "all",
            "dtype": "float32", "d_model": D, "shard_texts": shard_texts}
    w = StoreWriter(path, spec, texts)
    for start in range(0, n_texts, shard_texts):
        chunk = range(start, min(n_texts, start + shard_texts))
        tensors = {}
        rows_text = torch.tensor([i for i in chunk for _ in range(rows_per_text)])
        pos = torch.tensor([p for _ in chunk for p in range(rows_per_text)])
        resp = (pos >= 2).long()  # positions 0-1 are the prompt
        for layer in range(LAYERS):
            for role in ("finetuned", "base"):
                x = torch.randn(len(rows_text), D, generator=g)
                if role == "finetuned":
                    mis = torch.tensor([texts[t]["aligned"] < 30 for t in rows_text.tolist()])
                    x += strength * (mis & (resp == 1)).float()[:, None] * planted[layer]
                    x += 0.5 * planted[layer]  # the finetune also moves everything a little
                tensors[f"{role}/resid/{layer}"] = x
        tensors.update({"row.text": rows_text, "row.pos": pos, "row.response": resp})
        w.add_shard(tensors, (chunk.start, chunk.stop), len(rows_text))
    return w.finish(), planted


def test_recovers_planted_direction_at_every_layer(tmp_path):
    store, planted = synthetic_store(tmp_path / "s")
    ex = extract(store, "mean-diff", "response", holdout=0.2)
    for i, layer in enumerate(ex.direction.layers):
        assert float(ex.direction.unit[i] @ planted[layer]) > 0.99
        assert ex.reports[i].auroc > 0.95
    md = extract(store, "model-diff", "all")
    for i, layer in enumerate(md.direction.layers):
        assert float(md.direction.unit[i] @ planted[layer]) > 0.9


def test_streaming_equals_in_memory(tmp_path):
    store, _ = synthetic_store(tmp_path / "s")
    ex = extract(store, "mean-diff", "response", holdout=0.0)
    rows = store.rows()
    texts = store.texts()
    mis = torch.tensor([texts[t]["aligned"] <= 30 for t in rows["text"].tolist()])
    sel = rows["response"] == 1
    for i, layer in enumerate(store.layers):
        x = store.load("finetuned", layer).double()
        ref = x[sel & mis].mean(0) - x[sel & ~mis].mean(0)
        torch.testing.assert_close(ex.direction.raw[i].double(), ref, rtol=1e-5, atol=1e-6)


def test_too_few_answers_names_the_counts(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", n_texts=9, shard_texts=5)
    with pytest.raises(ConfigError, match=r"too few answers.*\d+ misaligned and \d+ aligned"):
        extract(store, "mean-diff", "response", holdout=0.2)
    with pytest.raises(ConfigError, match="unknown method"):
        extract(store, "pca")


def test_artifact_round_trip_and_width_check(tmp_path):
    store, _ = synthetic_store(tmp_path / "s")
    d = extract(store, "mean-diff", "response").direction
    path = d.save(tmp_path / "dir")
    back = Direction.load(path)
    assert back.layers == d.layers and torch.equal(back.raw, d.raw.float())
    assert back.meta["method"] == "mean-diff" and back.meta["counts"]["pos_texts"] > 0
    assert back.best_layer in back.layers and back.norm_at(0) > 0
    with pytest.raises(DirectionError, match="width 32 but the model has d_model 64"):
        back.check_fits(64)
    with pytest.raises(DirectionError, match="no direction file"):
        Direction.load(tmp_path / "missing")


def test_random_like_same_norm_and_seeded():
    d = Direction([0, 1], torch.randn(2, D), torch.ones(2))
    r1, r2, r3 = random_like(d, 1), random_like(d, 1), random_like(d, 2)
    torch.testing.assert_close(r1.norms, d.norms)
    assert torch.equal(r1.raw, r2.raw) and not torch.equal(r1.raw, r3.raw)
    assert abs(float(r1.unit[0] @ d.unit[0])) < 0.6


def test_auroc_and_cosines():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1], [0, 1]) == 0.5
    rng = np.random.default_rng(0)
    assert abs(auroc(rng.normal(size=2000), rng.normal(size=2000)) - 0.5) < 0.03
    m = cosine_matrix(torch.tensor([[1.0, 0], [0, 2.0], [1, 1]]))
    torch.testing.assert_close(m.diagonal(), torch.ones(3))
    assert abs(float(m[0, 2]) - 2 ** -0.5) < 1e-6
