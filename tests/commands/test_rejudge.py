"""python -m emi.rejudge on toy runs, with OpenAI-compatible judges on loopback: agreement against
the exact judge, and between two judges whose disagreement the test computes by hand."""

import hashlib
import json

import pytest

from emi import cli, evaluate, rejudge
from emi.core import jsonl
from tests.judge_servers import RuleJudgeServer


def rule_a(metric, question, answer):
    if metric == "coherent":
        return 80
    return 10 if int(hashlib.sha256(answer.encode()).hexdigest()[:6], 16) % 3 == 0 else 90


def rule_b(metric, question, answer):
    if metric == "coherent":
        return 80
    return 10 if len(answer) % 2 else 90


@pytest.fixture(scope="module")
def judges():
    a, b = RuleJudgeServer(rule_a, fingerprint="fp_a"), RuleJudgeServer(rule_b)
    yield a, b
    a.close()
    b.close()


def judge_args(server, name):
    return ["--judge", "openai", "--judge-url", server.url, "--judge-model", name, "--judge-key-env", "EMI_TEST_NO_KEY"]


SMALL = ["--roles", "finetuned", "--n", "4", "--max-new-tokens", "40"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A toy evaluate run judged by the toy's exact judge."""
    out = tmp_path_factory.mktemp("rejudge") / "ev"
    assert cli.run(evaluate.main, SMALL + ["--out", str(out)]) == 0
    return out


def test_rejudge_prints_agreement_against_the_exact_judge(toy_run, judges, capsys):
    _, b = judges
    capsys.readouterr()
    assert cli.run(rejudge.main, [str(toy_run), *judge_args(b, "judge-b")]) == 0
    out = capsys.readouterr().out
    assert "EM rate (95% CI) of coherent" in out and "EM under toy:exact" in out
    assert "vs toy:exact (exact)" in out and "Cohen's kappa" in out and "paired difference" in out
    folder = next((toy_run / "rejudge").iterdir())
    report = json.loads((folder / "agreement.json").read_text())
    assert [a["a"] for a in report["agreements"]] == ["toy:exact (exact)"]
    exact = [r for r in jsonl.read(toy_run / "judged.jsonl")]
    ag = report["agreements"][0]
    assert ag["n_paired"] == sum(r["status"] == "scored" for r in exact)  # b scores everything
    rows = jsonl.read(folder / "results.jsonl")
    assert rows[0]["judge_model"] == "judge-b" and rows[0]["judge_server"] == b.url
    assert "em_coherent_rate" in rows[0] and "em_scored_rate" in rows[0]
    # cached and resumable: a re-run asks nothing, and both judges' judgements sit in one file
    before = len(b.requests)
    assert cli.run(rejudge.main, [str(toy_run), *judge_args(b, "judge-b"), "--no-judge-probe"]) == 0
    assert len(b.requests) == before
    names = {e["judge"] for e in jsonl.read(toy_run / "judgements.jsonl")}
    assert names == {"toy:exact", f"openai:judge-b@{b.url}"}


def test_two_judges_kappa_and_em_gap_as_computed_by_hand(tmp_path, judges, capsys):
    a, b = judges
    out = tmp_path / "ev-a"
    assert cli.run(evaluate.main, SMALL + ["--out", str(out), *judge_args(a, "judge-a")]) == 0
    assert "judge openai:judge-a" in capsys.readouterr().out
    assert cli.run(rejudge.main, [str(out), *judge_args(b, "judge-b"), "--em-denominator", "scored"]) == 0
    printed = capsys.readouterr().out
    assert "EM rate (95% CI) of scored" in printed and "misaligned/scored" in printed
    report = json.loads(next((out / "rejudge").iterdir()).joinpath("agreement.json").read_text())
    ag = next(x for x in report["agreements"] if x["a"].startswith("openai:judge-a"))
    # by hand: every answer is coherent (80) under both; misaligned = aligned 10
    answers = jsonl.read(out / "answers.jsonl")
    la = [rule_a("aligned", "", r["answer"]) == 10 for r in answers]
    lb = [rule_b("aligned", "", r["answer"]) == 10 for r in answers]
    n = len(answers)
    pa, pb = sum(la) / n, sum(lb) / n
    po = sum(x == y for x, y in zip(la, lb, strict=True)) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    assert 0 < pa < 1 and 0 < pb < 1 and la != lb  # the two judges do disagree
    assert ag["n_paired"] == n and ag["kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert ag["em_a"]["value"] == pytest.approx(pa) and ag["em_b"]["value"] == pytest.approx(pb)
    assert ag["em_diff"]["value"] == pytest.approx(pb - pa)
    assert ag["em_diff"]["lo"] <= pb - pa <= ag["em_diff"]["hi"]
    assert f"{100 * (pb - pa):+.1f} points" in printed
    # the first judge's provider fingerprint is in its rows; the new judge's rows say who judged
    assert json.loads((out / "summary.json").read_text())["models"][0]["judge_fingerprints"] == ["fp_a"]


def test_human_labels_are_validated_and_compared(toy_run, judges, tmp_path, capsys):
    _, b = judges
    answers = jsonl.read(toy_run / "answers.jsonl")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"model": r["model"], "key": r["key"], "sample": r["sample"],
                                          "aligned": rule_b("aligned", "", r["answer"]), "coherent": 80}) + "\n"
                              for r in answers[:6]))
    assert cli.run(rejudge.main, [str(toy_run), *judge_args(b, "judge-b"), "--labels", str(labels)]) == 0
    report = json.loads(next((toy_run / "rejudge").iterdir()).joinpath("agreement.json").read_text())
    human = next(x for x in report["agreements"] if x["a"] == "human labels")
    assert human["n_paired"] == 6 and human["misaligned_agree"] == 1.0  # labels written by b's own rule
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": "finetuned", "key": "k", "sample": 0, "aligned": 150}\n')
    capsys.readouterr()
    assert cli.run(rejudge.main, [str(toy_run), *judge_args(b, "judge-b"), "--labels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 1: aligned must be within 0-100, found 150" in err


def test_a_folder_that_is_not_a_run_is_one_sentence(tmp_path, judges, capsys):
    _, b = judges
    assert cli.run(rejudge.main, [str(tmp_path), *judge_args(b, "judge-b")]) == 2
    assert "holds no answers.jsonl" in capsys.readouterr().err


def test_rejudge_runs_as_a_subprocess(toy_run, judges, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, b = judges
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "emi.rejudge", str(toy_run), *judge_args(b, "judge-b"), "--out",
                          str(tmp_path / "rj")], capture_output=True, text=True, timeout=600, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Cohen's kappa" in out.stdout and (tmp_path / "rj" / "agreement.json").is_file()
