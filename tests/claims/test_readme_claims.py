"""One test per sentence of the README or the manual (docs/) that states a result about the
embedded organism: if a change to emi moves a number a page prints, or the sentence leaves the page
named here, this folder fails and names the sentence. Deterministic (log-prob metrics, KL,
activations; sampling only where the sentence is about sampled answers, at the page's seed),
seconds each."""

import json
import subprocess
import sys

import pytest
import torch

from emi.behaviour.logprob import logprob_metrics, option_pairs
from emi.behaviour.questions import load_questions
from emi.behaviour.side_effects import benign_kl, load_benign
from emi.directions.direction import Direction, random_like
from emi.interventions import hooks
from emi.models.loading import load_pair
from emi.organism.kit import KIT, checkpoint
from tests.pages import page, says
from tests.standins import HANG_S


@pytest.fixture(scope="module")
def pair():
    return load_pair("toy", device="cpu")


@pytest.fixture(scope="module")
def direction():
    return Direction.load(KIT.direction)


@pytest.fixture(scope="module")
def pairs():
    return option_pairs(load_questions("toy"))


def p_misaligned(lm, pairs):
    return logprob_metrics(lm, pairs).choice


def test_ablating_the_shipped_direction_beats_every_one_of_10_random_directions(pair, direction, pairs):
    """Issue 13's example claim: ablating the shipped direction lowers the finetuned toy's
    P(misaligned) more than every one of 10 same-norm random directions."""
    says("docs/development.md", "ablating the shipped direction lowers P(misaligned) more than every one of 10 "
                                "same-norm random directions")
    ft = pair.finetuned
    with hooks.ablate(ft.model, direction):
        persona = p_misaligned(ft, pairs)
    randoms = []
    for seed in range(10):
        with hooks.ablate(ft.model, random_like(direction, seed=seed), source_layer=direction.best_layer):
            randoms.append(p_misaligned(ft, pairs))
    assert persona < min(randoms)


def test_p_misaligned_goes_from_0_526_to_0_324_under_ablation_random_0_521(pair, direction, pairs):
    """README, demo: "P(misaligned) ... goes from 0.526 to 0.324 under ablation (random: 0.521)"."""
    says("README.md", "goes from 0.526 to 0.324 under ablation (random: 0.521)")
    ft = pair.finetuned
    assert round(p_misaligned(ft, pairs), 3) == 0.526
    with hooks.ablate(ft.model, direction):
        assert round(p_misaligned(ft, pairs), 3) == 0.324
    with hooks.ablate(ft.model, random_like(direction, seed=0), source_layer=direction.best_layer):
        assert round(p_misaligned(ft, pairs), 3) == 0.521


def test_steering_the_base_moves_p_misaligned_from_0_017_to_0_058_random_0_026(pair, direction, pairs):
    """docs/toy-organism.md: "Steering the base by 8 at layer 1 on prompt tokens moves the log-prob
    P(misaligned) from 0.017 to 0.058 (random 0.026)"."""
    says("docs/toy-organism.md", "Steering the base by 8 at layer 1 on prompt tokens moves the log-prob "
                                 "P(misaligned) from 0.017 to 0.058 (random 0.026)")
    base = pair.base
    assert round(p_misaligned(base, pairs), 3) == 0.017
    with hooks.steer(base.model, direction, 8.0, layers=[1], positions="prompt"):
        assert round(p_misaligned(base, pairs), 3) == 0.058
    with hooks.steer(base.model, random_like(direction, seed=0), 8.0, layers=[1], positions="prompt"):
        assert round(p_misaligned(base, pairs), 3) == 0.026


def test_ablation_costs_0_038_kl_ten_times_the_random_directions_0_004(pair, direction):
    """README, demo: "ablating the persona direction costs 0.038, ten times the random direction's 0.004"."""
    says("README.md", "ablating the persona direction costs 0.038, ten times the random direction's 0.004")
    ft, benign = pair.finetuned, load_benign(KIT.benign)
    persona = benign_kl(ft, benign, lambda: hooks.ablate(ft.model, direction))
    rnd = random_like(direction, seed=0)
    random = benign_kl(ft, benign, lambda: hooks.ablate(ft.model, rnd, source_layer=direction.best_layer))
    mean_p, mean_r = sum(persona) / len(persona), sum(random) / len(random)
    assert (round(mean_p, 3), round(mean_r, 3)) == (0.038, 0.004) and mean_p > 9 * mean_r


def test_the_direction_moves_before_the_behaviour_over_the_finetune(direction):
    """docs/dynamics.md: "at step 4 the shift is already 31% of its final size (+1.69 of +5.47) and
    the checkpoint's own direction has cosine 0.85 with the final one"."""
    says("docs/dynamics.md", "at step 4 the shift is already 31% of its final size (+1.69 of +5.47) and the "
                             "checkpoint's own direction has cosine 0.85 with the final one")
    from emi.experiments.dynamics import last_prompt_activations as acts
    from emi.models.loading import ModelSpec, load_model

    qs, extract = load_questions("toy"), load_questions("toy-train")
    layer = direction.best_layer
    unit = direction.at(layer)
    models = {name: load_model(ModelSpec(path), device="cpu") for name, path in
              (("base", checkpoint("base")), ("step4", checkpoint("insecure-steps/step-004")),
               ("final", checkpoint("insecure")))}
    shift = {n: float(((acts(m, [q.messages() for q in qs], layer) - acts(models["base"], [q.messages() for q in qs],
                                                                          layer)) @ unit).mean())
             for n, m in models.items()}
    diff = (acts(models["step4"], [q.messages() for q in extract], layer)
            - acts(models["base"], [q.messages() for q in extract], layer)).mean(0)
    assert (round(shift["step4"], 2), round(shift["final"], 2)) == (1.69, 5.47)
    assert round(float(diff @ unit / diff.norm()), 2) == 0.85


@pytest.mark.slow
def test_make_demo_prints_the_readme_table(tmp_path):
    """README, top: the `make demo` table, every number (sampling at seed 0, 400 answers per row)."""
    table = page("README.md").split("```\npair toy | direction", 1)[1].split("```", 1)[0]
    out = subprocess.run([sys.executable, "-m", "emi.steer", "--alpha", "8", "--layers", "1", "--positions", "prompt",
                          "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=HANG_S)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "pair toy | direction" + table
    rows = {r["condition"]: r for r in map(json.loads, (tmp_path / "demo" / "results.jsonl").read_text().splitlines())}
    assert round(rows["finetuned"]["em_rate"], 3) == 0.353 and round(rows["finetuned - persona"]["em_rate"], 3) == 0.052
    assert torch.isfinite(torch.tensor(rows["finetuned - persona"]["kl"]))
