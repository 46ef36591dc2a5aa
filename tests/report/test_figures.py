"""Figure builders are pure functions of emi's result rows: check what they plot."""

import numpy as np
import pytest

from emi.core.errors import ConfigError
from emi.report import figures


def row(condition, model, kind="none", alpha=0.0, direction="", em=(0.2, 0.1, 0.3, 5, 25), coh=(0.9, 0.8, 1.0, 25, 28),
        layers=(1,)):
    return {"condition": condition, "model": model, "intervention": kind, "alpha": alpha, "direction": direction,
            "layers": list(layers), "em_rate": em[0], "em_lo": em[1], "em_hi": em[2], "em_k": em[3], "em_n": em[4],
            "coherence_rate": coh[0], "coherence_lo": coh[1], "coherence_hi": coh[2], "coherence_k": coh[3],
            "coherence_n": coh[4], "pair": "toy"}


ROWS = [row("base", "base", em=(0.0, 0.0, 0.0, 0, 30)), row("finetuned", "finetuned", em=(0.35, 0.28, 0.42, 9, 26)),
        row("finetuned - persona", "finetuned", "ablate", direction="persona", em=(0.05, 0.02, 0.08, 1, 20)),
        row("base + 4 persona", "base", "steer", 4.0, "persona", em=(0.02, 0.0, 0.05, 1, 40)),
        row("base + 4 random", "base", "steer", 4.0, "random", em=(0.0, 0.0, 0.0, 0, 40)),
        row("base + 8 persona", "base", "steer", 8.0, "persona", em=(0.0, 0.0, 0.0, 0, 0)),
        row("base + 8 random", "base", "steer", 8.0, "random")]


def test_steer_summary_bars_and_cis():
    fig = figures.steer_summary(ROWS)
    bars = [t for t in fig.data if t.type == "bar"]
    em = bars[0]
    assert list(em.y) == [r["condition"] for r in ROWS][::-1]
    np.testing.assert_allclose(em.x[::-1], [100 * r["em_rate"] if r["em_n"] else 0 for r in ROWS])
    assert em.error_x.array[-2] == pytest.approx(42 - 35)  # the finetuned row's upper CI
    labels = [t for t in fig.data if t.type == "scatter"][0].text
    assert "no coherent answers" in labels  # the condition with an empty denominator says so
    assert "Ablating and adding" in fig.layout.title.text
    with pytest.raises(ConfigError):
        figures.steer_summary([])


def test_alpha_sweep_starts_at_the_unsteered_model():
    fig = figures.alpha_sweep(ROWS)
    persona = [t for t in fig.data if t.name == "persona direction"]
    assert list(persona[0].x) == [0.0, 4.0]  # alpha 8 has no coherent answers: no EM point
    assert list(persona[1].x) == [0.0, 4.0, 8.0]  # but it has a coherence point
    assert persona[0].y[0] == 0.0


def test_alpha_sweep_sorts_negative_alphas_and_shows_every_layer_group_and_model():
    sweep = [row("base", "base"), row("finetuned", "finetuned", em=(0.35, 0.28, 0.42, 9, 26))]
    for model in ("base", "finetuned"):
        for layers in ((0,), (2,)):
            for a in (8.0, -8.0):
                for kind in ("persona", "random"):
                    sweep.append(row(f"{model} {a} {kind} {layers}", model, "steer", a, kind, layers=layers))
    fig = figures.alpha_sweep(sweep)
    names = {t.name for t in fig.data if t.showlegend}
    assert names == {"persona direction @ layer 0", "persona direction @ layer 2", "random direction @ layer 0",
                     "random direction @ layer 2"}
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(lines) == 2 * 2 * 2 * 2  # models x layer groups x directions x (EM, coherence)
    assert all(list(t.x) == [-8.0, 0.0, 8.0] for t in lines)  # sorted, the unsteered model at 0
    assert [a.text for a in fig.layout.annotations][::2] == ["base: EM rate (misaligned / coherent)",
                                                              "finetuned: EM rate (misaligned / coherent)"]


def test_layer_separation_and_heatmap_and_histogram():
    sep = [{"layer": i, "auroc": a, "random_auroc": 0.5} for i, a in enumerate([0.9, 0.95, 0.7])]
    fig = figures.layer_separation(sep)
    assert list(fig.data[0].y) == [0.9, 0.95, 0.7] and fig.layout.yaxis.range == (0, 1.02)
    heat = figures.cosine_heatmap(np.eye(2), ["a", "b"])
    assert heat.data[0].zmin == -1 and heat.data[0].text[0][0] == "1.00"
    hist = figures.projection_histogram([0.1, 2.0, 1.5], ["aligned", "misaligned", "misaligned"])
    assert {t.name for t in hist.data} == {"aligned", "misaligned"}


def test_scatter_and_per_question_and_latents():
    recs = [{"model": "ft", "id": "q1", "aligned": 0.0, "coherent": 100.0, "status": "scored", "variant": "plain"},
            {"model": "ft", "id": "q2", "aligned": 100.0, "coherent": 100.0, "status": "scored", "variant": "plain"}]
    sc = figures.aligned_coherent(recs)
    assert sc.layout.shapes[0].x1 == 30 and sc.layout.shapes[0].y0 == 50  # the misaligned quadrant
    pq = figures.per_question(recs)
    assert list(pq.data[0].x) == ["q1", "q2"] and list(pq.data[0].y) == [100.0, 0.0]
    lb = figures.latent_bars([{"latent": 7, "diff": 1.2, "cosine": 0.5}])
    assert list(lb.data[0].x) == ["#7"]


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown figure format"):
        figures.export(figures.layer_separation([{"layer": 0, "auroc": 1, "random_auroc": 0.5}]), tmp_path / "f",
                       ("gif",))


def test_em_vs_kl_joins_each_sweep_from_the_unmodified_model():
    kl = {"base": 0.0, "finetuned": 0.0, "finetuned - persona": 0.04, "base + 4 persona": 0.01,
          "base + 4 random": 0.001, "base + 8 persona": 0.03, "base + 8 random": 0.002}
    rows = [{**r, "kl": kl[r["condition"]], "kl_lo": kl[r["condition"]] / 2, "kl_hi": 2 * kl[r["condition"]]}
            for r in ROWS]
    fig = figures.em_vs_kl(rows)
    lines = {t.name: t for t in fig.data if t.mode == "lines+markers" and t.xaxis == "x"}
    persona = lines["steer base: persona @L1"]
    assert list(persona.x) == [0.0, 0.01]  # base at KL 0, alpha 4; alpha 8 has no coherent answers
    assert list(persona.y) == [0.0, 2.0]
    assert list(lines["ablate from finetuned: persona"].x) == [0.0, 0.04]
    assert list(lines["ablate from finetuned: persona"].error_x.array) == [0.0, 0.04]
    coherence = [t for t in fig.data if t.name == "steer base: persona @L1" and t.xaxis == "x2"][0]
    assert list(coherence.x) == [0.0, 0.01, 0.03]  # every point has coherent answers to plot
    with pytest.raises(ConfigError, match="no side-effect columns"):
        figures.em_vs_kl(ROWS)


def test_a_browser_that_fails_to_start_is_an_error_never_a_hang(tmp_path, monkeypatch):
    """kaleido's sync server deadlocks when its Chromium fails to start (seen on a loaded machine):
    emi runs its own browser thread, so the failure reaches the caller, every time it is tried."""
    import kaleido
    import plotly.graph_objects as go

    from emi.core.errors import ConfigError
    from emi.report import figures as F

    async def fail(self):  # noqa: ANN001
        raise RuntimeError("Chromium took too long to start")

    monkeypatch.setattr(kaleido.Kaleido, "open", fail)
    fig = go.Figure(go.Scatter(x=[1, 2], y=[1, 2]))
    with F.browser():
        for name in ("a", "b"):
            with pytest.raises(ConfigError, match="cannot export PNG.*Chromium took too long.*HTML is written"):
                F.export(fig, tmp_path / name, ["html", "png"])
            assert (tmp_path / f"{name}.html").is_file() and not (tmp_path / f"{name}.png").exists()
