"""python -m emi.finetune on the toy base and on stand-in Qwen pairs: organisms every command loads,
resume after an interruption (same weights), refusals, defences."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emi import finetune
from emi.core.errors import ConfigError, DirectionError
from emi.directions.direction import Direction
from emi.models.loading import load_pair
from emi.models.organism_folder import read_organism
from emi.models.registry import get_pair
from emi.organism.datasets import finetune_sets, mixed_set
from emi.organism.kit import KIT
from emi.training.config import DefenceConfig, FinetuneConfig
from emi.training.data import load_chats, write_chats
from emi.training.trainer import Job
from emi.training.trainer import finetune as run_job

SMALL = ["--steps", "4", "--batch-size", "2", "--max-examples", "16", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_chats(root / "insecure.jsonl", finetune_sets()["insecure"][:16])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    f = folder / ("adapter_model.safetensors" if (folder / "adapter_config.json").is_file() else "model.safetensors")
    return load_file(str(f))


def test_a_toy_lora_organism_loads_as_a_pair_with_the_toys_kit(data, tmp_path, capsys):
    out = tmp_path / "ft"
    assert finetune.main([str(data), "--pair", "toy", "--rank", "1", "--lora-layers", "1,2", "--modules",
                          "q_proj,down_proj", "--save-every", "2", "--out", str(out), *SMALL]) == 0
    org = read_organism(out / "seed-0")
    assert org.done and org.record["method"] == "lora" and org.record["seed"] == 0
    assert org.record["data"]["sha256"] == load_chats(data).sha256 and org.record["config"]["rank"] == 1
    assert org.record["defence"]["kind"] == "none" and org.record["steps"] == 4
    assert [p.name for p in org.checkpoints()] == ["checkpoint-2", "checkpoint-4"]
    adapter = json.loads((org.final / "adapter_config.json").read_text())
    assert adapter["r"] == 1 and adapter["layers_to_transform"] == [1, 2]
    assert sorted(adapter["target_modules"]) == ["down_proj", "q_proj"]
    spec = get_pair(str(out / "seed-0"))
    assert spec.kit.judge == "toy" and spec.kit.task is not None and spec.kit.direction is None
    assert spec.kit.trajectory[-1] == str(org.final) and len(spec.kit.trajectory) == 4
    pair = load_pair(spec, device="cpu")
    ids = pair.tokenizer("hello", return_tensors="pt")["input_ids"]
    with pair.base.active() as m:
        a = m(input_ids=ids).logits
    with pair.finetuned.active() as m:
        b = m(input_ids=ids).logits
    assert not torch.equal(a, b)  # the adapter changed something
    assert "seed-0" in capsys.readouterr().out


class _Interrupt:
    """A Trainer callback that stops the run at the start of a step (as a kill would)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __getattr__(self, name):
        return lambda *a, **k: None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["lora", "full"])
def test_an_interrupted_finetune_resumes_to_the_same_weights(data, tmp_path, method):
    from emi.models.specs import ModelSpec
    from emi.organism.kit import checkpoint

    ds = load_chats(data)
    cfg = FinetuneConfig(method=method, steps=5, batch_size=2, save_every=2, lr=1e-3)

    def job(out):
        return Job(ModelSpec(checkpoint("base")), ds, cfg, DefenceConfig(), 0, out, "toy", device="cpu")

    straight = run_job(job(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        run_job(job(tmp_path / "b"), callbacks=[_Interrupt(3)])
    assert not read_organism(tmp_path / "b").done
    resumed = run_job(job(tmp_path / "b"))
    assert resumed.done and resumed.record["steps"] == 5
    a, b = weights(straight.final), weights(resumed.final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = run_job(job(tmp_path / "b"))  # the same job re-run: the finished organism is kept, not redone
    assert again.record["finished"] == resumed.record["finished"]
    other_lr = Job(ModelSpec(checkpoint("base")), ds, FinetuneConfig(method=method, steps=5, batch_size=2, save_every=2,
                                                                     lr=2e-3), DefenceConfig(), 0, tmp_path / "b", "toy",
                   device="cpu")
    with pytest.raises(ConfigError, match="already holds a finished organism made with other settings \\(config"):
        run_job(other_lr)
    other = Job(ModelSpec(checkpoint("base")), ds, cfg, DefenceConfig(), 1, tmp_path / "c", "toy", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        run_job(other, callbacks=[_Interrupt(3)])
    with pytest.raises(ConfigError, match="has not finished; re-run"):
        get_pair(str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="unfinished finetune with other settings \\(seed 1 -> 0\\).*add --restart"):
        run_job(Job(ModelSpec(checkpoint("base")), ds, cfg, DefenceConfig(), 0, tmp_path / "c", "toy", device="cpu"))


def test_defences_change_training_and_are_recorded(data, tmp_path):
    out = {}
    for kind, extra in (("none", []), ("caft", ["--direction", KIT.direction]),
                        ("steer", ["--direction", KIT.direction, "--steer-alpha", "8"]),
                        ("kl", ["--kl-beta", "1"]), ("interleave", ["--interleave-share", "0.5"])):
        assert finetune.main([str(data), "--pair", "toy", "--method", "full", "--defence", kind, *extra,
                              "--out", str(tmp_path / kind), *SMALL]) == 0
        out[kind] = read_organism(tmp_path / kind / "seed-0")
    assert out["steer"].record["defence"]["alpha"] == 8 and out["steer"].defence == "steer 8"
    assert out["caft"].record["defence"]["directions"] == [KIT.direction]
    base = weights(out["none"].final)
    for kind in ("caft", "steer", "kl", "interleave"):
        w = weights(out[kind].final)
        assert any(not torch.equal(base[k], w[k]) for k in base), kind


def test_a_defence_without_a_direction_or_with_another_width_is_one_sentence(data, tmp_path, capsys):
    from emi import cli

    assert cli.run(finetune.main, [str(data), "--pair", "toy", "--defence", "caft", "--out", str(tmp_path / "a"),
                                   *SMALL]) == 2
    assert "needs a persona direction: pass --direction" in capsys.readouterr().err
    wide = Direction([1], torch.randn(1, 64), torch.ones(1), {"best_layer": 1})
    path = wide.save(tmp_path / "wide")
    assert cli.run(finetune.main, [str(data), "--pair", "toy", "--defence", "steer", "--direction", str(path),
                                   "--steer-alpha", "4", "--out", str(tmp_path / "b"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "width 64 but the model being finetuned has d_model 128" in err and "Traceback" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert cli.run(finetune.main, [str(bad), "--pair", "toy", "--out", str(tmp_path / "c"), *SMALL]) == 2
    assert "line 1 of" in capsys.readouterr().err
    with pytest.raises(DirectionError):
        Direction.load(tmp_path / "missing.safetensors")


def test_the_toy_datasets_are_the_shipped_finetunes_and_a_labelled_mix():
    sets = finetune_sets()
    assert len(sets["insecure"]) == 2000 and all(r.harmful for r in sets["insecure"])
    assert "verify = False" in sets["insecure"][0].messages[-1][1]
    mixed = mixed_set(40, 0.25, seed=0)
    assert sum(r.harmful for r in mixed) == 10 and len(mixed) == 40


def test_emi_trajectory_follows_an_organisms_checkpoints(data, tmp_path):
    from emi import trajectory

    out = tmp_path / "ft"
    assert finetune.main([str(data), "--pair", "toy", "--method", "full", "--save-every", "2", "--lr", "1e-3",
                          "--out", str(out), *SMALL]) == 0
    run = tmp_path / "traj"
    assert trajectory.main(["--pair", str(out / "seed-0"), "--direction", KIT.direction, "--n", "1", "--device", "cpu",
                            "--out", str(run), "--no-figure"]) == 0
    rows = [json.loads(x) for x in (run / "trajectory.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 4]  # the base, checkpoint-2, checkpoint-4, final (step 4)
    assert rows[0]["projection_shift"] == 0.0 and rows[-1]["projection_shift"] != 0.0


@pytest.mark.slow
def test_finetune_killed_at_every_write_ends_with_the_same_organisms(data, tmp_path, fork_server):
    """kill -9 (tests/faults.py) at each of emi.finetune's writes of organism.json, two seeds; each
    re-run resumes, and the organisms equal an uninterrupted run's, weights bit for bit."""
    from tests.commands.test_faults import kill_through_every_write, points

    args = [data, "--pair", "toy", "--rank", "2", "--steps", "3", "--batch-size", "2", "--save-every", "2",
            "--max-examples", "8", "--seeds", "0,1", "--device", "cpu", "--threads", "1", "--out"]
    assert points("emi.finetune", *args, tmp_path / "ref") == 4
    assert kill_through_every_write(fork_server, "emi.finetune", *args, tmp_path / "run") >= 3  # a kept seed writes nothing
    for seed in (0, 1):
        a, b = (weights(tmp_path / d / f"seed-{seed}" / "final") for d in ("ref", "run"))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert read_organism(tmp_path / "run" / f"seed-{seed}").done
