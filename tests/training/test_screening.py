"""emi.screen: projections of training examples on the direction, and how well they flag harmful ones."""

import json

import numpy as np
import pytest
import torch

from emi import cli
from emi import screen as screen_cmd
from emi.directions.direction import Direction
from emi.models.loading import load_pair
from emi.organism.datasets import mixed_set
from emi.organism.kit import KIT
from emi.training.data import encode, write_chats
from emi.training.screening import projections, screen


def test_screen_scores_a_planted_ranking():
    s = screen(np.array([3.0, 2.0, 1.0, 0.0, np.nan]), [True, True, False, None, False])
    assert s.auroc == 1.0 and s.n_harmful == 2 and s.n_harmless == 1 and s.precision_at_k == 1.0
    assert s.ranking()[:3] == [0, 1, 2] and s.ranking()[-1] == 4
    flipped = screen(np.array([0.0, 1.0, 2.0]), [True, False, False])
    assert flipped.auroc == 0.0 and flipped.precision_at_k == 0.0
    assert np.isnan(screen(np.array([1.0]), [None]).auroc)


def test_an_examples_score_is_its_mean_assistant_token_projection():
    pair = load_pair("toy", roles=("base",), device="cpu")
    lm, d = pair.base, Direction.load(KIT.direction)
    records = mixed_set(4, 0.5, seed=1)
    got = projections(lm, records, d, layer=1, batch_size=3)
    for r, score in zip(records, got, strict=True):
        e = encode(lm.tokenizer, r.chat(), 1024)
        with torch.no_grad():
            h = lm.model(input_ids=torch.tensor([e.input_ids]), output_hidden_states=True).hidden_states[2][0]
        want = (h[torch.tensor(e.assistant)] @ d.at(1)).mean()
        assert score == pytest.approx(float(want), abs=1e-4)


def test_the_command_ranks_the_toys_villain_chats_above_chance(tmp_path, capsys):
    data = write_chats(tmp_path / "mixed.jsonl", mixed_set(60, 0.25, seed=3))
    assert screen_cmd.main([str(data), "--pair", "toy", "--device", "cpu", "--out", str(tmp_path / "s"), "--top", "3"]) == 0
    report = json.loads((tmp_path / "s" / "screen.json").read_text())
    assert report["n_harmful"] == 15 and report["n_harmless"] == 45 and report["auroc"] > 0.6
    scores = [json.loads(x) for x in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert sorted(s["rank"] for s in scores) == list(range(1, 61)) and scores[0]["line"] == 1
    assert "flags the harmful examples with AUROC" in capsys.readouterr().out


def test_a_direction_of_another_width_is_one_sentence(tmp_path, capsys):
    data = write_chats(tmp_path / "mixed.jsonl", mixed_set(4, 0.5))
    wide = Direction([1], torch.randn(1, 64), torch.ones(1), {"best_layer": 1}).save(tmp_path / "wide")
    assert cli.run(screen_cmd.main, [str(data), "--pair", "toy", "--direction", str(wide), "--device", "cpu",
                                     "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "width 64 but the model" in err and "Traceback" not in err
