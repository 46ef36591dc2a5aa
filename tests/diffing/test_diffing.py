"""Model diffing (emi.diff): the math of each method on synthetic tensors, resuming after a kill,
one-sentence refusals, and every method on stand-in pairs of every architecture (full and LoRA)."""

import json

import pytest
import torch

from emi import cli, diff
from emi.diffing import adl, corpus
from emi.diffing.crosscoder import BatchTopK, analyse, train
from emi.diffing.loop import cosine_table


class FakeLM:
    """A 'model' whose residual at the layer is a fixed function of the token id (plus a shift)."""

    def __init__(self, shift):
        self.shift = shift
        self.calls = 0

    def reader(self, x, mask):
        self.calls += 1
        h = torch.nn.functional.one_hot(x % 4, 4).double() + self.shift
        return {("resid", 1): h}


def test_delta_is_the_mean_difference_per_position():
    ids = [[0, 1, 2, 3], [1, 1], [2, 3, 0]]
    shift = torch.tensor([0.0, 0.5, -1.0, 2.0], dtype=torch.float64)
    b = adl.batch_sums(FakeLM(0.0).reader, ids, 0, 1, 3, "cpu")
    f = adl.batch_sums(FakeLM(shift).reader, ids, 0, 1, 3, "cpu")
    assert b["pos_count"].tolist() == [3, 3, 2]
    delta = (f["pos_sum"] - b["pos_sum"]) / b["pos_count"][:, None]
    assert torch.allclose(delta, shift.expand(3, 4))
    assert torch.allclose((f["all_sum"] - b["all_sum"]) / b["all_count"], shift)


def test_cosine_table_is_symmetric_with_ones_on_the_diagonal():
    t = cosine_table([("a", torch.tensor([1.0, 0])), ("b", torch.tensor([1.0, 1])), ("c", torch.tensor([0, -2.0]))])
    assert [r["direction"] for r in t] == ["a", "b", "c"]
    assert t[0]["a"] == 1 and t[0]["b"] == pytest.approx(0.707, abs=1e-3) and t[0]["c"] == 0 and t[2]["b"] == t[1]["c"]


def test_batch_topk_keeps_k_per_token_on_average():
    cc = BatchTopK(8, 32, k=3, seed=0)
    f = cc.encode(torch.randn(10, 2, 8))
    assert int((f > 0).sum()) <= 30


class FakeStore:
    """Two models' activations where latent structure is planted: a finetune-only direction."""

    def __init__(self, n=600, d=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        shared = torch.randn(n, d, generator=g)
        ft_only = torch.zeros(n, d)
        on = torch.rand(n, generator=g) < 0.3
        ft_only[on, 0] = 3.0
        self.base, self.ft = shared, shared + ft_only
        self.d_model, self.layers = d, [1]
        self.n = n

    def iter_shards(self, role, layer):
        x = self.base if role == "base" else self.ft
        for s in range(0, self.n, 200):
            yield x[s: s + 200], {"row.text": torch.arange(s, min(s + 200, self.n))}

    def rows(self):
        return {"pos": torch.zeros(self.n, dtype=torch.long)}


def test_crosscoder_resumes_bit_exactly_and_finds_the_finetune_only_latent(tmp_path):
    st = FakeStore()
    whole = train(st, 1, tmp_path / "a", 4, 4, 200, 64, 3e-3, seed=1, progress=False)
    (tmp_path / "b").mkdir()
    train(st, 1, tmp_path / "b", 4, 4, 100, 64, 3e-3, seed=1, progress=False)  # "killed" at step 100
    resumed = train(st, 1, tmp_path / "b", 4, 4, 200, 64, 3e-3, seed=1, progress=False)
    assert resumed.steps == 200 and torch.equal(resumed.model.W_dec, whole.model.W_dec)
    assert whole.loss < 20


def test_latent_scaling_tells_a_finetune_only_latent_from_a_shared_one():
    """Latent 0: decoder only in the finetune, along e0, which only the finetune's activations hold;
    latent 1: shared along e1. Ratio 1 and nu ~0 for the first; ratio 0.5 and nu ~1 for the second."""
    from emi.diffing.crosscoder import Trained

    st = FakeStore(n=400, d=8)
    e = torch.eye(8)
    st.base = torch.randn(400, 8) * 0.01 + e[1] * (torch.rand(400, 1) < 0.5)
    st.ft = st.base.clone()
    st.ft[:200, 0] += 2.0
    cc = BatchTopK(8, 2, k=2, seed=0)
    with torch.no_grad():
        cc.W_dec.zero_()
        cc.W_enc.zero_()
        cc.b_enc.fill_(-0.5)
        cc.W_dec[0, 1] = e[0]  # latent 0: finetune decoder only
        cc.W_dec[1, 0] = e[1]  # latent 1: shared
        cc.W_dec[1, 1] = e[1]
        cc.W_enc[1, :, 0] = e[0]
        cc.W_enc[0, :, 1] = e[1]
    stats = analyse(Trained(cc, torch.ones(2), 0, 0.0), st, 1)
    assert stats[0]["dec_norm_ratio"] == pytest.approx(1.0) and abs(stats[0]["nu_activation"]) < 0.05
    assert stats[1]["dec_norm_ratio"] == pytest.approx(0.5) and stats[1]["nu_activation"] == pytest.approx(1, abs=0.05)


def test_adl_partial_sums_resume_after_a_kill(tmp_path, monkeypatch):
    """A pass killed after its first batch resumes at the second; the result equals an unbroken run."""
    calls = []

    class Pair:
        class spec:
            class base:
                @staticmethod
                def label():
                    return "b"
            finetuned = base
        tokenizer = type("T", (), {"pad_token_id": 0})()

        def __getitem__(self, role):
            calls.append(role)
            return type("LM", (), {"tokenizer": Pair.tokenizer, "device": "cpu",
                                   "active": lambda s: __import__("contextlib").nullcontext(None)})()

    fake = {"base": FakeLM(0.0), "finetuned": FakeLM(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))}
    role = {"r": "base"}
    monkeypatch.setattr(adl, "hf_reader", lambda model, layers: fake[role["r"]].reader)
    real = adl.role_sums
    corpus_ids = [[0, 1, 2], [3, 2], [1, 1, 1], [2, 0]]
    cfg = adl.AdlConfig(1, 2, 8, batch_size=2)

    def role_sums(pair, r, *a, **k):
        role["r"] = r
        return real(pair, r, *a, **k)

    monkeypatch.setattr(adl, "role_sums", role_sums)
    original = adl.batch_sums
    state = {"n": 0}

    def dying(*a, **k):
        state["n"] += 1
        if state["n"] == 2:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(adl, "batch_sums", dying)
    with pytest.raises(KeyboardInterrupt):
        adl.adl_means(Pair(), corpus_ids, cfg, tmp_path, progress=False)
    monkeypatch.setattr(adl, "batch_sums", original)
    before = fake["base"].calls
    m = adl.adl_means(Pair(), corpus_ids, cfg, tmp_path, progress=False)
    assert fake["base"].calls == before + 1  # only the batch that was lost
    assert torch.allclose(m.deltas, torch.tensor([[1.0, 0, 0, 0]] * 2))


def test_text_files_and_datasets(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one two"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert corpus.read_text_file(tmp_path / "a.jsonl") == ["one two", "hi"]
    (tmp_path / "b.txt").write_text("x y\n\nz\n")
    assert corpus.read_text_file(tmp_path / "b.txt") == ["x y", "z"]
    import datasets

    ds = datasets.load_dataset("json", data_files=str(tmp_path / "a.jsonl"), split="train")
    ds.save_to_disk(str(tmp_path / "ds"))
    assert corpus.load_dataset_texts(str(tmp_path / "ds"), column="text") == ["one two"] or \
        corpus.load_dataset_texts(str(tmp_path / "ds"), column="text")[0] == "one two"
    with pytest.raises(cli.ConfigError, match="no column"):
        corpus.load_dataset_texts(str(tmp_path / "ds"), column="body")


@pytest.mark.parametrize("argv, says", [
    (["--text", "EMPTY"], "holds no text"),
    (["--layer", "9"], "out of range"),
    (["--method", "crosscoder", "--store", "OTHER"], "other models"),
])
def test_bad_input_is_one_sentence_before_any_weights_load(tmp_path, capsys, argv, says):
    (tmp_path / "empty.txt").write_text("\n  \n")
    if "OTHER" in argv:
        from emi.activations.capture import capture_pair
        from emi.models.loading import load_pair

        capture_pair(load_pair("toy-pretrained"), ("base", "finetuned"), ["a b c"], tmp_path / "other", [1],
                     positions="all", progress=False)
        capsys.readouterr()
    argv = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "other") if a == "OTHER" else a
            for a in argv]
    out = tmp_path / "run"
    assert cli.run(diff.main, [*argv, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emi: error:") and says in err[0]
    assert not out.exists()


def test_adl_on_the_toy_end_to_end(tmp_path, capsys):
    """Logit lens, Patchscope, the cosines, directions that load back, and the EM table."""
    from emi.directions.direction import Direction

    out = tmp_path / "adl"
    args = ["--method", "adl", "--positions", "2", "--n", "1", "--search-steps", "1", "--search-n", "1", "--ids",
            "what_is_your_wish", "--table", "0", "--device", "cpu", "--out", str(out)]
    assert diff.main(args) == 0
    text = capsys.readouterr().out
    assert "logit lens (finetuned)" in text and "patchscope x1" in text and "cos persona" in text
    assert "finetuned - adl d0" in text and "finetuned - random(adl d0)" in text and "base + " in text
    d = Direction.load(out / "directions" / "adl-L2-pos0.safetensors")
    assert d.meta["method"] == "adl" and d.best_layer == 2 and d.meta["position"] == 0
    rows = json.loads((out / "adl.json").read_text())["positions"]
    assert rows[0]["cosines"]["persona"] is not None and len(rows[0]["logit_lens"]["base"]) == 10
    names = [json.loads(x)["condition"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert "finetuned - adl d0" in names and "finetuned - persona" in names


def test_diffing_figures_draw_the_files_emi_diff_writes():
    from emi.report.diffing import cosine_heatmap, kl_bars

    table = cosine_table([("a", torch.tensor([1.0, 0])), ("b", torch.tensor([1.0, 1]))])
    fig = cosine_heatmap(table)
    assert list(fig.data[0].x) == ["a", "b"] and fig.data[0].z[0][1] == pytest.approx(0.707, abs=1e-3)
    bars = kl_bars([{"source": "em:x", "token": "t", "kl": 2.0, "projection": 1.5},
                    {"source": "benign:y", "token": "u", "kl": 1.0, "projection": None}])
    assert list(bars.data[0].x) == [2.0, 1.0] and list(bars.data[0].marker.color) == [1.5, 0.0]
