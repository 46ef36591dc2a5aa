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
    assert [r.direction for r in t] == ["a", "b", "c"]
    c = [r.cosines for r in t]
    assert c[0]["a"] == 1 and c[0]["b"] == pytest.approx(0.707, abs=1e-3) and c[0]["c"] == 0 and c[2]["b"] == c[1]["c"]


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


def test_the_auxiliary_k_loss_trains_only_dead_latents_on_the_error():
    """Gao et al.'s aux-k: the k_aux largest pre-activations of the dead latents decode the (detached)
    error; normalised by the error's variance; its gradient reaches the dead latents alone."""
    from emi.diffing.crosscoder import auxk_loss

    cc = BatchTopK(4, 6, k=1, seed=0)
    x = torch.randn(5, 2, 4, generator=torch.Generator().manual_seed(1))
    pre = cc.pre_acts(x) + 0.1  # every latent positive somewhere, so top-k_aux picks real values
    err = x - cc.decode(cc.select(pre))
    dead = torch.tensor([True, False, True, False, False, True])
    loss = auxk_loss(cc, pre, err, dead, k_aux=2)
    sub = pre[:, dead]
    keep = sub.topk(2, dim=-1)
    f = torch.zeros_like(sub).scatter(-1, keep.indices, keep.values)
    e = err.detach()
    hand = (torch.einsum("bl,lmd->bmd", f, cc.W_dec[dead]) - e).pow(2).sum((1, 2)).mean() / \
        (e - e.mean(0)).pow(2).sum((1, 2)).mean()
    assert torch.allclose(loss, hand)
    cc.zero_grad()
    loss.backward()
    moved = cc.W_dec.grad.abs().sum((1, 2)) > 0
    assert moved.tolist() == dead.tolist() and bool((cc.W_enc.grad[..., ~dead] == 0).all())
    assert float(auxk_loss(cc, pre, err, torch.zeros(6, dtype=torch.bool), 2)) == 0


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
    assert stats[0].dec_norm_ratio == pytest.approx(1.0) and abs(stats[0].nu_activation) < 0.05
    assert stats[1].dec_norm_ratio == pytest.approx(0.5) and stats[1].nu_activation == pytest.approx(1, abs=0.05)
    assert abs(stats[0].nu_error) < 0.05  # the base error lacks it
    assert stats[0].nu_recon is None  # no other latent carries it, in either model
    assert stats[1].nu_error == pytest.approx(1, abs=0.05)


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
        from emi.activations.plan import CaptureSpec
        from emi.models.loading import load_pair

        capture_pair(load_pair("toy-pretrained"), ("base", "finetuned"), ["a b c"], tmp_path / "other",
                     CaptureSpec([1], positions="all"), progress=False)
        capsys.readouterr()
    argv = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "other") if a == "OTHER" else a
            for a in argv]
    out = tmp_path / "run"
    assert cli.run(diff.main, [*argv, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emi: error:") and says in err[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def toy_diff(tmp_path_factory):
    """One small emi.diff run of each method on the toy (ADL with its EM table; KL and the
    crosscoder without): (the run folders by method, what ADL printed)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("toy-diff")
    runs = {m: root / m for m in ("adl", "kl", "crosscoder")}
    common = ["--device", "cpu", "--n", "1", "--ids", "what_is_your_wish"]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert diff.main(["--method", "adl", "--positions", "2", "--search-steps", "1", "--search-n", "1",
                          "--table", "0", *common, "--out", str(runs["adl"])]) == 0
    assert diff.main(["--method", "kl", "--no-table", "--top", "3", *common, "--out", str(runs["kl"])]) == 0
    assert diff.main(["--method", "crosscoder", "--no-table", "--top", "3", "--cc-steps", "30", "--cc-batch", "128",
                      "--expansion", "2", "--k", "4", *common, "--out", str(runs["crosscoder"])]) == 0
    return runs, text.getvalue()


def test_adl_on_the_toy_end_to_end(toy_diff):
    """Logit lens, Patchscope, the cosines, directions that load back, and the EM table."""
    from emi.directions.direction import Direction

    runs, text = toy_diff
    out = runs["adl"]
    assert "logit lens (finetuned)" in text and "patchscope x1" in text and "cos persona" in text
    assert "finetuned - adl d0" in text and "finetuned - random(adl d0)" in text and "base + " in text
    d = Direction.load(out / "directions" / "adl-L2-pos0.safetensors")
    assert d.meta["method"] == "adl" and d.best_layer == 2 and d.meta["position"] == 0
    rows = json.loads((out / "adl.json").read_text())["positions"]
    assert rows[0]["cosines"]["persona"] is not None and len(rows[0]["logit_lens"]["base"]) == 10
    names = [json.loads(x)["condition"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert "finetuned - adl d0" in names and "finetuned - persona" in names


def test_emi_figures_draws_a_diff_run(toy_diff, tmp_path):
    """python -m emi.figures on emi.diff's folders: every diffing figure, as HTML and PNG, drawn from
    the numbers in the run's files (tokens, direction names, latents, tokens with a projection)."""
    from emi import figures

    runs, _ = toy_diff
    figs = tmp_path / "figs"
    assert figures.main([str(r) for r in runs.values()] + ["--out", str(figs), "--format", "html,png"]) == 0
    want = ["adl-logit-lens", "adl-cosines", "adl-results-summary", "kl-kl-top", "kl-kl-projection",
            "crosscoder-decoder-ratio", "crosscoder-latent-scaling"]
    for name in want:
        png = figs / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    adl_rows = json.loads((runs["adl"] / "adl.json").read_text())["positions"]
    fig = figures.diffing.logit_lens_bars(json.loads((runs["adl"] / "adl.json").read_text()))
    assert len(fig.data) == 2 * len(adl_rows)
    assert list(fig.data[1].y)[::-1] == [repr(t) for t, _ in adl_rows[0]["logit_lens"]["finetuned"][:8]]
    cos = json.loads((runs["adl"] / "cosines.json").read_text())
    heat = figures.diffing.cosine_heatmap(cos)
    assert list(heat.data[0].x) == [r["direction"] for r in cos] and "persona" in heat.data[0].x
    kl = json.loads((runs["kl"] / "kl.json").read_text())
    assert len(figures.diffing.kl_projection(kl).data[0].x) == kl["n_tokens"] == len(kl["points"])
    cc = json.loads((runs["crosscoder"] / "crosscoder.json").read_text())
    alive = [x for x in cc["all"] if x["frequency"] > 0]
    hist = figures.diffing.decoder_ratio_histogram(cc)
    assert len(hist.data[0].x) == len(alive) and 0 < len(alive) <= cc["latents"]
    assert cc["dead"] >= 0 and cc["auxk"]["alpha"] == pytest.approx(1 / 32)


def test_each_diff_file_is_read_and_written_by_its_record(toy_diff, tmp_path):
    """adl.json, kl.json, crosscoder.json and cosines.json read into their records, which write
    back the very JSON emi.diff wrote; a crosscoder.json from before the auxiliary-k loss reads with
    its fields None; a damaged file is one sentence naming the file and the key."""
    from emi.diffing.records import AdlFile, CosineRow, CrosscoderFile, KlFile

    runs, _ = toy_diff
    for cls, run in ((AdlFile, "adl"), (KlFile, "kl"), (CrosscoderFile, "crosscoder")):
        raw = json.loads((runs[run] / cls.FILE).read_text())
        rec = cls.read(runs[run] / cls.FILE)
        assert json.dumps(rec.row()) == json.dumps(raw), cls.FILE  # the same keys, order and values
    assert AdlFile.read(runs["adl"] / "adl.json").positions[0].logit_lens["base"]
    cos = json.loads((runs["adl"] / "cosines.json").read_text())
    assert [r.row() for r in CosineRow.table(cos)] == cos
    old = json.loads((runs["crosscoder"] / "crosscoder.json").read_text())
    for k in ("aux_loss", "auxk"):
        del old[k]
    for s in old["all"] + old["top"]:
        del s["nu_recon"], s["max_activation"]
    cc = CrosscoderFile.of(old)
    assert cc.aux_loss is None and cc.auxk is None and cc.all[0].nu_recon is None and cc.all[0].contexts == [
        tuple(c) for c in old["all"][0]["contexts"]]
    old["all"][0]["frequency"] = "often"
    with pytest.raises(cli.ConfigError, match=r"crosscoder.json: all\[0\]: column 'frequency'"):
        CrosscoderFile.of(old)


def test_emi_figures_refuses_a_diff_file_it_cannot_read(tmp_path, capsys):
    from emi import figures

    (tmp_path / "adl.json").write_text('{"layer": 2}')
    assert cli.run(figures.main, [str(tmp_path / "adl.json"), "--out", str(tmp_path / "figs"), "--format", "html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adl.json" in err[0] and "positions" in err[0] and not (tmp_path / "figs").exists()


def test_diffing_figures_draw_the_files_emi_diff_writes():
    from emi.report.diffing import cosine_heatmap, kl_bars

    table = cosine_table([("a", torch.tensor([1.0, 0])), ("b", torch.tensor([1.0, 1]))])
    fig = cosine_heatmap(table)
    assert list(fig.data[0].x) == ["a", "b"] and fig.data[0].z[0][1] == pytest.approx(0.707, abs=1e-3)
    from emi.diffing.records import KlToken

    tok = {"position": 0, "context": "c", "next_ft": "a", "next_base": "b"}
    bars = kl_bars([KlToken(source="em:x", token="t", kl=2.0, projection=1.5, **tok),
                    KlToken(source="benign:y", token="u", kl=1.0, projection=None, **tok)])
    assert list(bars.data[0].x) == [2.0, 1.0] and list(bars.data[0].marker.color) == [1.5, 0.0]
