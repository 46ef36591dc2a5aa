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
