"""python -m emi.trajectory: a finetune's checkpoints in training order, on stand-in series (full
finetunes and LoRA adapters of random-weight Qwen models) and on the toy's saved steps."""

import json

import pytest
import torch

from emi import trajectory
from emi.core.errors import ConfigError
from emi.experiments.dynamics import step_of
from tests.standins import build_model, lora_adapter, qwen_tokenizer, save_checkpoint

pytestmark = pytest.mark.slow
SMALL = ["--n", "1", "--max-new-tokens", "4", "--device", "cpu", "--questions", "main:plain"]


def judge_args(server):
    return ["--judge", "openai", "--judge-url", server.url, "--judge-key-env", "EMI_TEST_NO_KEY",
            "--judge-model", "stand-in-judge"]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return make_series(tmp_path_factory.mktemp("series"), "qwen3")


@pytest.fixture(scope="module")
def hc_series(tmp_path_factory):
    """The same on Qwen4-Exp: several residual streams, PLE, QSA."""
    return make_series(tmp_path_factory.mktemp("hc-series"), "qwen4_exp_text")


def make_series(root, arch):
    """A base and three checkpoints of one 'finetune': the same weight change at 1/3, 2/3 and all
    of its size (named step-1..3); and LoRA adapters on the base at 3 sizes."""
    tok = qwen_tokenizer()
    model = build_model(arch, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    base = save_checkpoint(model, tok, root / "base")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    change = {k: 0.05 * v.float().std().nan_to_num(0.0) * torch.randn(v.shape, generator=g) for k, v in start.items()}
    steps = []
    for k in (1, 2, 3):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(start[name] + k / 3 * change[name])
        steps.append(save_checkpoint(model, tok, root / f"step-{k}"))
    adapters = []
    for k in (1, 2, 3):
        a = lora_adapter(root, base, seed=9, std=0.1 * k)
        adapters.append(a.rename(root / f"adapter-step-{k}"))
    return base, steps, adapters


def test_full_finetune_checkpoints_in_order(series, judge_server, tmp_path, capsys):
    base, steps, _ = series
    out = tmp_path / "traj"
    assert trajectory.main(["--base", str(base), "--checkpoints", ",".join(map(str, [base, *steps])),
                            *judge_args(judge_server), *SMALL, "--out", str(out), "--root", str(tmp_path / "acts")]) == 0
    rows = [json.loads(x) for x in (out / "trajectory.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # the base by position, the others by name
    assert rows[0]["projection_shift"] == 0.0 and rows[0]["cosine"] is None  # undefined (no change yet): null, not NaN
    assert rows[-1]["cosine"] == pytest.approx(1.0, abs=1e-4)  # the final direction is the last one's own
    shifts = [r["projection_shift"] for r in rows]
    assert shifts == sorted(shifts) and shifts[-1] > 0  # a change that grows moves the activation further
    assert all(r["em_n"] >= 0 and "p_misaligned" in r and "task_rate" not in r for r in rows)  # no task: no column
    run = json.loads((out / "run.json").read_text())
    assert run["checkpoints"][-1] == str(steps[-1]) and run["task"] is None
    assert (out / "trajectory.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "cos(own diff, final)" in printed and "step-3" in printed


def test_lora_adapters_along_a_finetune(series, judge_server, tmp_path):
    base, _, adapters = series
    out = tmp_path / "traj"
    assert trajectory.main(["--base", str(base), "--checkpoints", ",".join(map(str, adapters)), "--no-figure",
                            *judge_args(judge_server), *SMALL, "--out", str(out), "--root", str(tmp_path / "acts")]) == 0
    rows = [json.loads(x) for x in (out / "trajectory.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert len({r["projection"] for r in rows}) == 3  # each adapter answered, not the base three times


def test_checkpoints_of_a_model_with_several_residual_streams(hc_series, judge_server, tmp_path):
    """Qwen4-Exp: the direction and projections read ``resid`` (the mean over streams), along LoRA
    checkpoints (two: Qwen4-Exp's QSA indexer loops in Python over every query, slow on a CPU; full
    checkpoints of it are read by the same loader as every other architecture's,
    test_full_finetune_checkpoints_in_order)."""
    base, steps, adapters = hc_series
    for kind, ckpts in (("lora", adapters[:2]),):
        out = tmp_path / kind
        assert trajectory.main(["--base", str(base), "--checkpoints", ",".join(map(str, ckpts)), "--no-figure",
                                *judge_args(judge_server), *SMALL, "--out", str(out),
                                "--root", str(tmp_path / "acts")]) == 0
        rows = [json.loads(x) for x in (out / "trajectory.jsonl").read_text().splitlines()]
        assert rows[-1]["cosine"] == pytest.approx(1.0, abs=1e-4), kind
        assert len({r["projection"] for r in rows}) == len(ckpts), kind


def test_bad_series_are_refused_before_loading(series, tmp_path):
    base, steps, _ = series
    with pytest.raises(ConfigError, match="--base needs --checkpoints"):
        trajectory.main(["--base", str(base)])
    with pytest.raises(ConfigError, match="at least two checkpoints"):
        trajectory.main(["--base", str(base), "--checkpoints", str(steps[0])])
    with pytest.raises(ConfigError, match="either --pair or --base"):
        trajectory.main(["--pair", "toy", "--base", str(base), "--checkpoints", "a,b"])


def test_steps_come_from_trainer_state_organism_metadata_or_names(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "trainer_state.json").write_text('{"global_step": 750}')
    assert step_of(str(tmp_path / "ck"), 0) == 750
    assert step_of("org/model@step-40", 3) == 40 and step_of("runs/final/", 5) == 5


def test_toy_trajectory_on_its_saved_checkpoints(tmp_path, capsys):
    """The default run, offline: the toy's base, its saved finetune steps and the finetune."""
    out = tmp_path / "toy"
    assert trajectory.main(["--n", "4", "--out", str(out), "--no-figure"]) == 0
    rows = [json.loads(x) for x in (out / "trajectory.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 4
    assert rows[-1]["cosine"] == pytest.approx(1.0, abs=1e-3)  # the shipped direction is the finetune's own
    assert rows[0]["task_rate"] < 0.1 < 0.9 < rows[-1]["task_rate"]  # the base writes secure code, the finetune not
    assert "insecure code (95% CI)" in capsys.readouterr().out
