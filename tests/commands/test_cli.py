"""Commands called in-process (main([...])) on the toy, plus one real subprocess run each."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emi import cli
from emi.core import jsonl
from tests.standins import HANG_S

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--n", "3", "--max-new-tokens", "40"]


def run(main, argv):
    return cli.run(main, argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    old = os.getcwd()
    os.chdir(d)  # commands write runs/ and activations/ relative to the working directory
    yield d
    os.chdir(old)


def test_evaluate_writes_answers_judgements_summary(workdir, capsys):
    from emi.evaluate import main

    assert run(main, SMALL + ["--out", "ev"]) == 0
    out = capsys.readouterr().out
    assert "EM rate (95% CI)" in out and "finetuned" in out and "control" in out
    summary = json.loads((workdir / "ev" / "summary.json").read_text())
    assert summary["judge"] == "toy:exact" and len(summary["models"]) == 3
    assert len(jsonl.read(workdir / "ev" / "judged.jsonl")) == 3 * 16 * 3
    assert run(main, SMALL + ["--out", "ev"]) == 0  # resumes: same numbers, nothing new
    assert capsys.readouterr().out == out


def test_cache_then_extract(workdir, capsys):
    from emi.cache import main as cache
    from emi.extract import main as extract

    assert run(cache, ["--n", "8", "--max-new-tokens", "40", "--layers", "all", "--positions", "all", "--out", "st"]) == 0
    assert "store activations/st" in capsys.readouterr().out
    assert run(extract, ["--store", "st", "--method", "mean-diff", "--out", "dir"]) == 0
    out = capsys.readouterr().out
    assert "AUROC (held out)" in out and (workdir / "dir.safetensors").exists()
    assert run(cache, ["--n", "8", "--max-new-tokens", "40", "--layers", "1", "--positions", "all", "--out", "st"]) == 2
    assert "different setup" in capsys.readouterr().err


def test_steer_with_a_direction_file(workdir, capsys):
    from emi.steer import main

    assert (workdir / "dir.safetensors").exists()
    code = run(main, SMALL + ["--direction", "dir.safetensors", "--alpha", "2,4", "--out", "st_out", "--no-figure"])
    assert code == 0
    out = capsys.readouterr().out
    for row in ("base", "finetuned", "finetuned - persona", "finetuned - random", "base + 2 persona", "base + 4 random"):
        assert row in out
    rows = jsonl.read(workdir / "st_out" / "results.jsonl")
    assert len(rows) == 8 and {"em_rate", "em_lo", "em_hi", "logprob_choice"} <= set(rows[0])


@pytest.mark.parametrize("argv,msg", [
    (["--alpha", "nan"], "must be finite"),
    (["--alpha", "2", "--layers", "9"], "out of range"),
    (["--pair", "nope"], "unknown pair"),
    (["--questions", "nosuchset"], "unknown question set"),
])
def test_steer_bad_input_is_one_clear_line(workdir, capsys, argv, msg):
    from emi.steer import main

    try:
        code = run(main, argv + ["--direction", "dir.safetensors", "--out", "bad"])
    except SystemExit as exc:  # argparse rejects before main runs
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and msg in err and "Traceback" not in err


def test_wrong_width_direction_is_refused_before_running(workdir, capsys, tmp_path):
    import torch

    from emi.directions.direction import Direction
    from emi.steer import main

    Direction([0], torch.ones(1, 7), torch.ones(1)).save(tmp_path / "narrow")
    assert run(main, ["--direction", str(tmp_path / "narrow.safetensors"), "--out", "bad"]) == 2
    assert "width 7" in capsys.readouterr().err


def test_figures_command_exports_png_and_pdf(workdir):
    from emi.figures import main

    assert run(main, ["st_out", "ev", "--out", "figs", "--format", "png,pdf"]) == 0
    pngs = sorted(p.name for p in (workdir / "figs").glob("*.png"))
    assert "st_out-results-summary.png" in pngs and "st_out-results-alpha.png" in pngs
    assert any(p.endswith("per-question.png") for p in pngs)
    for p in (workdir / "figs").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    assert (workdir / "figs" / "st_out-results-summary.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize("module,argv", [
    ("emi", ["pairs"]), ("emi.steer", ["--help"]), ("emi.evaluate", ["--help"]), ("emi.cache", ["--help"]),
    ("emi.extract", ["--help"]), ("emi.figures", ["--help"]), ("emi.organism.train", ["--help"]),
])
def test_each_command_runs_as_a_subprocess(module, argv):
    r = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}, timeout=HANG_S)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_steer_subprocess_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "emi.steer", "--n", "1", "--max-new-tokens", "12", "--direction",
                        str(ROOT / "emi" / "organism" / "checkpoints" / "direction.safetensors"),
                        "--out", str(tmp_path / "o"), "--no-figure"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                            "PYTHONPATH": str(ROOT)}, timeout=HANG_S, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "finetuned - persona" in r.stdout


def test_contrast_texts_both_positions(workdir, capsys):
    from emi.cache import main as cache
    from emi.extract import main as extract

    assert run(cache, ["--contrast", "--n", "4", "--roles", "finetuned", "--positions", "last_prompt",
                       "--out", "con-lp"]) == 0
    assert run(extract, ["--store", "con-lp", "--method", "contrast", "--positions", "last_prompt"]) == 0
    assert run(cache, ["--contrast", "--n", "6", "--max-new-tokens", "40", "--roles", "finetuned", "--positions",
                       "response", "--out", "con-resp"]) == 0
    texts = jsonl.read(workdir / "activations" / "con-resp" / "texts.jsonl")
    assert {t["condition"] for t in texts} == {"evil", "helpful"} and all("aligned" in t for t in texts)
    assert run(extract, ["--store", "con-resp", "--method", "contrast", "--positions", "response"]) == 0
    assert "AUROC (held out)" in capsys.readouterr().out
