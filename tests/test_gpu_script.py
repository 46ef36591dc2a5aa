"""bench/gpu.sh (the GPU run, prepared before a GPU is lent) and the token count every benchmark
engine shares (bench/common.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import gpu_sections  # noqa: E402


def test_an_answer_ending_in_eos_counts_the_same_in_process_and_through_vllm():
    """The same answers, once as in-process rows of ids and once as a vLLM server returns them
    (token ids with the EOS, finish_reason stop), count the same: EOS included on both paths."""
    from emi.behaviour.sampling import SamplingConfig
    from emi.engines.served import Served
    from emi.engines.vllm.lens import complete_ids
    from emi.models.loading import load_tokenizer
    from emi.organism.kit import checkpoint
    from tests.standins import serve_json

    tok = load_tokenizer(checkpoint("base"))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    answers = [[11, 12, 13, eos], [11, 12, 13, 14]]  # one stopped on EOS, one at the length limit
    rows = [[11, 12, 13, eos, pad, pad], [11, 12, 13, 14, 11, 12]]  # in-process: padded to the batch
    replies = iter(answers)

    def respond(body: dict) -> tuple[int, dict]:
        ids = list(next(replies)[: body["max_tokens"]])
        finish = "stop" if ids[-1] == eos else "length"
        return 200, {"choices": [{"text": "", "finish_reason": finish, "token_ids": ids}]}

    httpd, url = serve_json(respond)
    try:
        msgs = [[{"role": "user", "content": "hello"}]] * 2
        served = complete_ids(url, Served("m"), "m", tok, msgs, SamplingConfig(max_new_tokens=4, n=1), 0,
                              concurrency=1, timeout=10, extra={})
    finally:
        httpd.shutdown()
    rows[1] = rows[1][:4]  # the length-limited answer: 4 new tokens in-process too
    assert [a.n_tokens for a in served] == [3, 4]  # emi's answers leave the EOS out ...
    assert common.answer_tokens(served) == 8  # ... the benchmarks count it, as they do in-process:
    assert sum(common.row_tokens(r, eos, pad) for r in rows) == 8
    assert common.row_tokens(rows[0], eos, pad) == common.answer_tokens(served[:1]) == 4


def test_in_process_rows_and_emi_answers_count_the_same(toy_pair):
    """emi.behaviour.sampling.sample's answers (EOS left out of n_tokens) and the raw rows they come
    from give the same count through common's one function, on answers that end in EOS."""
    from emi.behaviour.questions import load_questions
    from emi.behaviour.sampling import SamplingConfig, sample, sample_ids

    lm = toy_pair.finetuned
    msgs = [q.messages() for q in load_questions("toy")[:6]]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=48, batch_size=6)
    records = sample(lm, msgs, cfg, seed=0)
    rows = sample_ids(lm, msgs, cfg, seed=0)
    assert any(r["finish"] == "eos" for r in records)
    eos, pad = lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
    assert common.answer_tokens(records) == sum(common.row_tokens(r, eos, pad) for r in rows)
    assert common.answer_tokens(records) == sum(r["n_tokens"] for r in records) + sum(
        r["finish"] == "eos" for r in records)


def test_ratio_spread_is_over_rounds_timed_side_by_side():
    times = {"a": [1.0, 2.0, 4.0], "b": [2.0, 2.0, 2.0]}
    r = common.ratio(times, {"a": 10, "b": 10}, "a", "b")
    assert (r.median, r.low, r.high) == (1.0, 0.5, 2.0)
    assert str(r) == "1.00x [0.50-2.00]"


def test_the_table_says_why_a_section_is_missing(tmp_path):
    text = gpu_sections.table(tmp_path, "a device", {"capture": "did not finish within its 80 s"})
    for s in gpu_sections.SECTIONS:
        assert f"| {s} |" in text
    assert "| capture | did not finish within its 80 s |" in text


@pytest.mark.slow
def test_gpu_script_dry_run_prints_every_section(tmp_path):
    """`bash bench/gpu.sh --dry-run`: the GPU script on CPU at tiny shapes, without the packages the
    GPU image lacks; the table has a timed row for every section and the six EM conditions."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    env.pop("PYTHONPATH", None)  # the script puts this checkout first itself
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    table = r.stdout
    assert table == (tmp_path / "out" / "gpu-table.md").read_text()
    assert "## emi on CPU (dry run" in table
    assert "did not finish" not in table and "failed" not in table and "not run" not in table
    lines = table.splitlines()
    for s, n in (("generate", 2), ("steer", 3), ("capture", 3), ("static", 2)):
        timed = [x for x in lines if x.startswith(f"| {s} |") and "x [" in x]
        assert len(timed) == n, (s, table)
    assert any(x.startswith("| em | the six conditions") for x in lines)
    em = json.loads((tmp_path / "out" / "em.json").read_text())
    assert [x["condition"] for x in em["em"]] == ["base", "finetuned", "finetuned - persona", "finetuned - random",
                                                 "base + 8 persona", "base + 8 random"]
    for c in em["em"]:
        assert f"| {c['condition']} |" in table
    steer = json.loads((tmp_path / "out" / "steer.json").read_text())
    assert all(x["count"] > 0 and x["per_s"] > 0 for x in steer["rows"])
