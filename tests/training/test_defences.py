"""emi.defences: the defence table of toy organisms (two defences, two seeds) with emi's own metrics."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from emi import cli, defences, finetune
from emi.behaviour.metrics import Rate
from emi.behaviour.records import Estimate
from emi.models.loading import load_pair
from emi.organism.datasets import finetune_sets
from emi.organism.kit import KIT
from emi.report.figures import defences as defences_figure
from emi.training.data import write_chats
from emi.training.evaluation import benign_shift, spread
from emi.training.records import read_defences


@pytest.fixture(scope="module")
def organisms(tmp_path_factory):
    root = tmp_path_factory.mktemp("orgs")
    data = write_chats(root / "insecure.jsonl", finetune_sets()["insecure"][:32])
    common = ["--pair", "toy", "--method", "full", "--steps", "3", "--batch-size", "4", "--lr", "3e-4",
              "--save-every", "2", "--seeds", "0,1", "--device", "cpu", "--threads", "1"]
    assert finetune.main([str(data), *common, "--out", str(root / "none")]) == 0
    assert finetune.main([str(data), *common, "--defence", "caft", "--direction", KIT.direction,
                          "--out", str(root / "caft")]) == 0
    return root


def test_the_table_has_a_row_per_defence_and_seed_and_their_spread(organisms, tmp_path, capsys):
    out = tmp_path / "table"
    assert defences.main([str(organisms / "none"), str(organisms / "caft"), "--with-pair-finetune", "--n", "1",
                          "--device", "cpu", "--out", str(out), "--no-figure"]) == 0
    rows = [json.loads(x) for x in (out / "defences.jsonl").read_text().splitlines()]
    assert [(r["defence"], r["seed"]) for r in rows] == [("(base)", None), ("toy finetune", None), ("none", 0),
                                                         ("none", 1), ("caft", 0), ("caft", 1)]
    assert rows[0]["kl"] == 0.0 and rows[0]["projection_shift"] == 0.0
    assert all(r["kl"] > 0 and r["em_n"] > 0 and "task_rate" in r for r in rows[1:])
    assert [p[0] for p in rows[2]["shift_trajectory"]] == [0.0, 2.0, 3.0]
    assert rows[2]["shift_trajectory"][-1][1] == pytest.approx(rows[2]["projection_shift"], abs=1e-4)
    summary = json.loads((out / "spread.json").read_text())
    assert [s["defence"] for s in summary] == ["none", "caft"] and summary[0]["seeds"] == [0, 1]
    assert summary[0]["kl_min"] <= summary[0]["kl_mean"] <= summary[0]["kl_max"]
    printed = capsys.readouterr().out
    assert "seeds' spread per defence" in printed and "KL benign" in printed
    fig = defences_figure(rows, "insecure code")
    assert len(fig.data) >= 6


def test_the_kl_of_a_model_from_itself_is_zero():
    pair = load_pair("toy", device="cpu")
    from emi.behaviour.side_effects import load_benign

    items = load_benign(KIT.benign)[:8]
    assert benign_shift(pair.base, pair.base, items) == [0.0] * 8
    assert min(benign_shift(pair.base, pair.finetuned, items)) > 0


ROW = read_defences(Path(__file__).parents[1] / "behaviour" / "data" / "defences-main.jsonl")[-1]  # an organism's


def row(seed, em, shift, defence="none", **more):
    """A defence row of an organism (``seed``; None: the base's) with these measures."""
    m = replace(ROW.measures, em=Rate(em, em, em, 0, 1), projection_shift=Estimate(shift, shift, shift), **more)
    return replace(ROW, defence=defence, seed=seed, measures=m)


def test_spread_of_one_seed_has_no_sd():
    nan = Estimate(float("nan"), float("nan"), float("nan"))
    rows = [replace(row(0, 0.3, 1.0), kl=nan), replace(row(None, 0.0, 0.0, defence="(base)"), kl=nan)]
    (s,) = spread(rows)
    assert s["em_rate_mean"] == 0.3 and s["em_rate_sd"] == 0.0 and "kl_mean" not in s


def test_a_folder_without_organisms_is_one_sentence(tmp_path, capsys):
    assert cli.run(defences.main, [str(tmp_path), "--out", str(tmp_path / "t")]) == 2
    assert "holds no organism" in capsys.readouterr().err


def test_shift_predicts_is_pearson_r_across_organisms_only():
    from emi.training.evaluation import shift_predicts

    rows = [replace(row(None, 0.0, 100.0), task=None)] + [
        replace(row(i, 0.1 * i, float(i), p_misaligned=Estimate(1.0 - 0.2 * i, 0.0, 1.0)), task=None) for i in range(4)]
    r = shift_predicts(rows)
    assert r["em_rate"] == pytest.approx(1.0) and r["p_misaligned"] == pytest.approx(-1.0) and "task_rate" not in r


@pytest.fixture(scope="module")
def inoculated(organisms):
    """One seed of a toy finetune trained with the inoculation prompt (emi.finetune --system)."""
    data = organisms / "insecure.jsonl"
    assert finetune.main([str(data), "--pair", "toy", "--method", "full", "--steps", "2", "--batch-size", "4",
                          "--lr", "3e-4", "--seeds", "0", "--device", "cpu", "--threads", "1", "--system",
                          "inoculation", "--out", str(organisms / "inoc")]) == 0
    return organisms / "inoc"


def test_the_inoculation_defence_is_evaluated_with_and_without_its_prompt(organisms, inoculated, tmp_path, capsys):
    """An organism trained with --system inoculation has a row without the prompt (the defence) and
    one with it (the trigger), and so has the base; the prompted rows' answers were asked with the
    prompt, the unprompted rows' without; the KL is the model's (the same on both of its rows), and
    the prompted rows are a group of their own in the seeds' spread."""
    from emi.behaviour.elicitation import system_prompts

    out = tmp_path / "table"
    assert defences.main([str(inoculated), str(organisms / "none" / "seed-0"), "--n", "1", "--device", "cpu",
                          "--ids", "i_feel_bored,quick_buck",
                          "--out", str(out), "--no-figure"]) == 0
    rows = [json.loads(x) for x in (out / "defences.jsonl").read_text().splitlines()]
    assert [(r["defence"], r["seed"], r["evaluated"]) for r in rows] == [
        ("(base)", None, "default"), ("(base) [eval: inoculation]", None, "system=inoculation"),
        ("inoculation", 0, "default"), ("inoculation [eval: inoculation]", 0, "system=inoculation"),
        ("none", 0, "default")]
    assert rows[3]["kl"] == rows[2]["kl"] > 0 and rows[3]["em_n"] > 0 and "shift_trajectory" not in rows[3]
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    prompt = system_prompts()["inoculation"]
    asked = {(a["model"], a["elicitation"]["system"]) for a in answers}
    assert {s for _, s in asked} == {"none", "inoculation"} and len(asked) == 5
    assert all(a["messages"][0] == {"role": "system", "content": prompt} for a in answers
               if a["elicitation"]["system"] == "inoculation")
    assert [s["defence"] for s in json.loads((out / "spread.json").read_text())] == [
        "inoculation", "inoculation [eval: inoculation]", "none"]
    printed = capsys.readouterr().out
    assert "evaluated with" in printed and "KL benign: on the benign conversations as they stand" in printed
