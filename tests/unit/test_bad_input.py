"""Bad input: one sentence naming the problem and the fix, never a number computed from input
emi did not understand."""

import pytest

from emi import cli, steer
from emi.directions import Direction
from emi.errors import ConfigError, DirectionError
from emi.layers import resolve_layers
from emi.questions import load_questions


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
