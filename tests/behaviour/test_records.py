"""Typed results records: a row written by the current release reads back into its record and is
written again byte for byte; a wrong column is one sentence naming the line and the column."""

import json
import math
from pathlib import Path

import pytest

from emi.behaviour.metrics import Rate, summarize
from emi.behaviour.records import SummaryColumns
from emi.core.errors import ConfigError
from emi.core.vocab import SteerPositions, check, words
from emi.experiments.results import ResultRow, read_results

MAIN = Path(__file__).parent / "data" / "results-main.jsonl"  # make demo's results.jsonl, written by emi 0.1.0


def test_a_results_file_of_the_last_release_reads_and_writes_back_the_same():
    rows = read_results(MAIN)
    assert [json.dumps(r.row()) for r in rows] == MAIN.read_text().splitlines()
    ft = next(r for r in rows if r.condition == "finetuned")
    assert ft.model == "finetuned" and ft.intervention == "none" and ft.em.n == ft.summary.em.n > 0
    assert ft.logprob is not None and 0 <= ft.logprob.choice <= 1 and ft.side_effects is not None


def test_a_rate_writes_and_reads_its_own_five_columns():
    r = Rate(0.25, 0.1, 0.4, 5, 20)
    assert r.columns("task") == {"task_rate": 0.25, "task_lo": 0.1, "task_hi": 0.4, "task_k": 5, "task_n": 20}
    assert Rate.from_columns(r.columns("task"), "task") == r
    assert Rate.from_columns({"em_rate": 0.5}, "task") is None
    old = {"em_rate": 0.5, "em_lo": 0.2, "em_hi": 0.8, "em_n": 10}  # no _k column
    assert Rate.from_columns(old, "em") == Rate(0.5, 0.2, 0.8, 5, 10)


def test_a_summary_round_trips_and_undefined_is_nan():
    s = SummaryColumns.of(summarize([{"id": "a", "aligned": 10, "coherent": 90}]))
    assert SummaryColumns.from_row(s.row()) == s
    back = SummaryColumns.from_row({**s.row(), "mean_aligned": None})
    assert math.isnan(back.mean_aligned)


@pytest.mark.parametrize(("column", "value", "says"), [
    ("intervention", "nudge", "'intervention' must be one of none, ablate, steer"),
    ("model", "teacher", "'model' must be one of base, finetuned, control"),
    ("alpha", "8", "column 'alpha' should be float"),
    ("layers", [1.5], "column 'layers' should be list\\[int\\]"),
    ("positions", "middle", "positions must be one of all, prompt, generated"),
])
def test_a_wrong_column_is_one_sentence_naming_line_and_column(tmp_path, column, value, says):
    row = json.loads(MAIN.read_text().splitlines()[-1])
    f = tmp_path / "results.jsonl"
    f.write_text(json.dumps(row) + "\n" + json.dumps({**row, column: value}) + "\n")
    with pytest.raises(ConfigError, match=f"line 2.*{says}"):
        read_results(f)


def test_a_missing_column_is_named(tmp_path):
    row = json.loads(MAIN.read_text().splitlines()[0])
    del row["em_rate"], row["em_n"]
    f = tmp_path / "results.jsonl"
    f.write_text(json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match="line 1: no 'em_rate' column"):
        read_results(f)


def test_vocabularies_are_checked_once_at_the_edge():
    assert words(SteerPositions) == ("all", "prompt", "generated")
    assert check("prompt", SteerPositions, "--positions") == "prompt"
    with pytest.raises(ConfigError, match="--positions must be one of all, prompt, generated; found 'response'"):
        check("response", SteerPositions, "--positions")


def test_result_rows_are_frozen_records():
    r = read_results(MAIN)[0]
    assert isinstance(r, ResultRow)
    with pytest.raises(AttributeError):
        r.alpha = 3.0  # type: ignore[misc]


DATA = Path(__file__).parent / "data"
TRAJECTORY = DATA / "trajectory-main.jsonl"  # python -m emi.trajectory --n 2 on the toy, before TrajectoryRow
DEFENCES = DATA / "defences-main.jsonl"  # python -m emi.defences on two toy organisms (one inoculated)
REJUDGED = DATA / "trajectory-rejudged.jsonl"  # a line of python -m emi.rejudge of that trajectory run
EVALUATE = DATA / "evaluate-models.jsonl"  # the models rows of python -m emi.evaluate's summary.json


def _lines(path):
    return path.read_text().splitlines()


def test_a_trajectory_file_reads_into_records_and_writes_back_byte_for_byte():
    from emi.core.atomic import dumps
    from emi.experiments.measures import read_trajectory

    rows = read_trajectory(TRAJECTORY)
    assert [dumps(r.row(), ensure_ascii=False) for r in rows] == _lines(TRAJECTORY)
    base, last = rows[0], rows[-1]
    assert base.step == 0 and math.isnan(base.cosine) and base.measures.projection_shift.value == 0.0  # null: nan
    assert last.cosine == pytest.approx(1.0, abs=1e-3) and last.task is not None and last.task.n > 0
    assert last.judging.denominator == "coherent" and last.judging.judged_by.judge == "toy:exact"
    assert last.counts is None and not last.more
    assert [type(r).from_row(r.row()) for r in rows[1:]] == rows[1:]  # (the base's nan cosine equals nothing)


def test_a_defence_file_reads_into_records_and_writes_back_byte_for_byte():
    from emi.core.atomic import dumps
    from emi.training.records import DefenceRow, read_defences

    rows = read_defences(DEFENCES)
    assert [dumps(r.row(), ensure_ascii=False) for r in rows] == _lines(DEFENCES)
    assert [(r.defence, r.seed, r.eval_prompt) for r in rows] == [
        ("(base)", None, None), ("(base) [eval: inoculation]", None, "inoculation"), ("toy finetune", None, None),
        ("inoculation", 0, None), ("inoculation [eval: inoculation]", 0, "inoculation"), ("none", 0, None)]
    assert [r.shift_trajectory is not None for r in rows] == [False, False, False, True, False, True]
    assert rows[0].kl == (0.0, 0.0, 0.0) and rows[2].kl.value > 0 and rows[4].kl == rows[3].kl
    assert [DefenceRow.from_row(r.row()) for r in rows] == rows


def test_a_rejudged_trajectory_row_keeps_its_columns_and_adds_the_judges_counts_at_the_end():
    from emi.behaviour.metrics import summarize
    from emi.core.atomic import dumps
    from emi.experiments.measures import TrajectoryRow, read_trajectory

    (rejudged,) = read_trajectory(REJUDGED)
    assert dumps(rejudged.row(), ensure_ascii=False) == _lines(REJUDGED)[0]
    assert rejudged.counts is not None and rejudged.counts.n_scored == rejudged.measures.n_answers
    row = read_trajectory(TRAJECTORY)[-1]
    s = SummaryColumns.of(summarize([{"id": "a", "aligned": 10, "coherent": 90, "judge": "j"}] * 3))
    again = row.rejudged(s)
    assert again.measures.em == s.em and again.measures.n_answers == 3 and again.judging.judged_by.judge == "j"
    assert again.measures.p_misaligned == row.measures.p_misaligned and again.task == row.task  # judge-free: kept
    before, after = list(row.row()), list(again.row())
    assert after == before + ["n_scored", "n_unscored", "n_code", "n_refusal", "mean_aligned", "mean_coherent"]
    assert TrajectoryRow.from_row(again.row()) == again


def test_an_evaluate_row_round_trips_and_is_rejudged_by_its_summary():
    from emi.behaviour.metrics import summarize
    from emi.judging.evaluation import EvaluateRow

    rows = [EvaluateRow.from_row(json.loads(x)) for x in _lines(EVALUATE)]
    assert [r.row() for r in rows] == [json.loads(x) for x in _lines(EVALUATE)]
    assert [r.label for r in rows] == ["base", "finetuned"] and rows[1].engine == "in-process"
    assert rows[1].logprob is not None and rows[1].elicitation == "default"
    s = SummaryColumns.of(summarize([{"id": "a", "aligned": 10, "coherent": 90}]))
    assert rows[1].rejudged(s).summary == s and list(rows[1].rejudged(s).row()) == list(rows[1].row())
    old = {k: v for k, v in rows[0].row().items() if k not in ("engine", "elicitation", "elicitation_record")}
    assert EvaluateRow.from_row(old).row() == old  # a row from before the elicitation columns stays one


@pytest.mark.parametrize(("name", "column", "value", "says"), [
    ("trajectory", "step", "3", "column 'step' should be int, found '3'"),
    ("trajectory", "cosine", "high", "column 'cosine' should be float"),
    ("trajectory", "denominator", "all", "'denominator' must be one of coherent, scored"),
    ("trajectory", "em_rate", None, "no 'em_rate' column; this is not a trajectory.jsonl"),
    ("trajectory", "projection_shift", None, "no 'projection_shift' column"),
    ("defences", "seed", "0", "column 'seed' should be int"),
    ("defences", "shift_trajectory", [[0, "x"]], "column 'shift_trajectory' should be list"),
    ("defences", "kl", None, "no 'kl' column; this is not a defences.jsonl"),
])
def test_a_damaged_trajectory_or_defence_line_names_the_file_line_and_column(tmp_path, name, column, value, says):
    import re

    from emi.experiments.measures import read_trajectory
    from emi.training.records import read_defences

    source, read = (TRAJECTORY, read_trajectory) if name == "trajectory" else (DEFENCES, read_defences)
    good = json.loads(_lines(source)[-1])
    bad = {k: v for k, v in good.items() if k != column} if value is None else {**good, column: value}
    f = tmp_path / f"{name}.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}, line 2: ") + f".*{says}"):
        read(f)


def test_the_trajectory_and_defence_figures_take_the_records_or_their_lines():
    from emi.experiments.measures import read_trajectory
    from emi.report.figures import defences, trajectory
    from emi.training.records import read_defences

    for figure, read, path in ((trajectory, read_trajectory, TRAJECTORY), (defences, read_defences, DEFENCES)):
        records, lines = read(path), [json.loads(x) for x in _lines(path)]
        assert figure(records, "insecure code").to_json() == figure(lines, "insecure code").to_json()
