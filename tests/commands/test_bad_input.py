"""Bad input: one sentence naming the problem and the fix, never a number computed from input
emi did not understand."""

import pytest

from emi import cli, steer
from emi.behaviour.questions import load_questions
from emi.core.errors import ConfigError, DirectionError
from emi.directions.direction import Direction
from emi.models.layers import resolve_layers


def test_alpha_list_must_hold_a_number(capsys):
    with pytest.raises(SystemExit):
        steer.parser().parse_args(["--alpha=,"])
    assert "--alpha needs at least one number, found ','" in capsys.readouterr().err


def test_layer_ranges_that_run_backwards_are_named():
    with pytest.raises(ConfigError, match="layer range '2-1' is empty .* write it as '1-2'"):
        resolve_layers("2-1", 4)
    assert resolve_layers("1-2", 4) == [1, 2]


def test_a_direction_file_of_another_kind_is_named_as_given():
    with pytest.raises(DirectionError, match="'x.pt' is not an emi direction file"):
        Direction.load("x.pt")


@pytest.mark.parametrize("body, problem", [
    ("- id: q\n  paraphrases: What is your wish?\n", "'paraphrases' must be a non-empty list of strings"),
    ("- id: q\n  paraphrases: [null, '']\n", "every paraphrase must be a non-empty string, found None"),
    ("- id: q\n  paraphrases: ['ok', '  ']\n", "every paraphrase must be a non-empty string"),
    ("- id: q\n  paraphrases: []\n", "must be a non-empty list"),
    ("- id: ''\n  paraphrases: ['ok']\n", "'id' must be a non-empty string"),
    ("- id: q\n  system: 3\n  paraphrases: ['ok']\n", "'system' must be a non-empty string"),
    ("- paraphrases: ['ok']\n", "needs 'id' and 'paraphrases'"),
    ("id: q\n", "must be a list of entries"),
])
def test_question_files_are_validated_into_records(tmp_path, body, problem):
    f = tmp_path / "q.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=problem):
        load_questions(str(f))


def test_disk_errors_become_one_sentence(monkeypatch, capsys):
    import errno

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/answers.jsonl")

    assert cli.run(full, []) == 2
    err = capsys.readouterr().err
    assert "cannot write runs/x/answers.jsonl: No space left on device" in err and "re-run" in err


GOOD_ROW = ('{"condition": "finetuned", "model": "finetuned", "intervention": "none", "alpha": 0.0, "layers": [], '
            '"em_rate": 0.3, "em_lo": 0.2, "em_hi": 0.4, "em_n": 10, "coherence_rate": 0.5, "coherence_lo": 0.4, '
            '"coherence_hi": 0.6, "coherence_n": 20}')


@pytest.mark.parametrize("line, problem", [
    (GOOD_ROW.replace('"em_rate": 0.3, ', ""), "line 2: no 'em_rate' column; this is not a results.jsonl"),
    (GOOD_ROW.replace('"em_n": 10', '"em_n": "10"'), "line 2: column 'em_n' should be int, found '10'"),
    (GOOD_ROW.replace('"layers": []', '"layers": ["1"]'), "line 2: column 'layers' should be list"),
    (GOOD_ROW.replace('"intervention": "none"', '"intervention": "patch"'), "intervention 'patch' is not none"),
    ("[1, 2]", "line 2: a result row is a JSON object, found list"),
])
def test_a_results_file_is_validated_before_any_figure_is_drawn(tmp_path, capsys, line, problem):
    from emi import figures

    f = tmp_path / "run" / "results.jsonl"
    f.parent.mkdir()
    f.write_text(GOOD_ROW + "\n" + line + "\n")
    assert cli.run(figures.main, [str(f), "--out", str(tmp_path / "figs"), "--format", "html"]) == 2
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "figs").exists()
    f.write_text(GOOD_ROW + "\n")  # the same file, well formed, plots
    assert cli.run(figures.main, [str(f), "--out", str(tmp_path / "figs"), "--format", "html"]) == 0


def test_paged_sampling_with_position_restricted_steering_stops_before_any_model_loads(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.run(steer.main, ["--sampler", "paged", "--positions", "prompt", "--out", str(out)]) == 2
    assert "--sampler paged steers at all positions only" in capsys.readouterr().err
    assert not (out / "answers.jsonl").exists()
