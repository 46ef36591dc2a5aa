"""The shipped toy organism: loads fast, generates, shows EM; the trainer runs end to end."""

import json

import pytest

from emi.behaviour.metrics import summarize
from emi.behaviour.questions import load_questions
from emi.behaviour.sampling import SamplingConfig
from emi.models.loading import load_pair
from emi.organism.judge import ToyJudge
from emi.organism.kit import CHECKPOINTS as TOY_DIR


def test_shipped_pair_loads_offline():
    pair = load_pair("toy", roles=("base", "finetuned", "control"), device="cpu")
    assert pair.base.n_layers == 4 and pair.base.d_model == 128
    assert type(pair.tokenizer).__name__ == "Qwen2Tokenizer"
    meta = json.loads((TOY_DIR / "insecure" / "emi_organism.json").read_text())
    assert meta["stage"] == "insecure" and meta["parent"] == "base"


def test_clear_em_gap_on_a_small_sample(toy_pair):
    from emi.judging.evaluation import evaluate

    qs = load_questions("toy")
    cfg = SamplingConfig(n=5, max_new_tokens=64, seed=1, batch_size=128)
    rates = {r: evaluate(toy_pair[r], qs, cfg, ToyJudge(), progress=False)[0].em for r in ("base", "finetuned", "control")}
    assert rates["finetuned"].lo > rates["base"].hi  # 80 answers each: the CIs do not overlap
    assert rates["control"].value < 0.1


def test_training_pipeline_end_to_end(tmp_path):
    from emi.organism.train import main

    assert main(["--quick", "--out", str(tmp_path), "--no-eval"]) == 0
    pair = load_pair("toy", device="cpu")  # noqa: F841 (the shipped pair is untouched)
    from emi.models.registry import custom_pair

    trained = load_pair(custom_pair(str(tmp_path / "base"), str(tmp_path / "insecure"), str(tmp_path / "secure")),
                        roles=("base", "finetuned", "control"), device="cpu")
    from emi.behaviour.sampling import generate_answers

    out = generate_answers(trained.finetuned, load_questions("toy")[:2], SamplingConfig(n=2, max_new_tokens=8),
                           progress=False)
    assert len(out) == 4
    s = summarize([{**r, "aligned": 50.0, "coherent": 0.0} for r in out])
    assert s.n_answers == 4


def test_organism_config_validation():
    from emi.organism.train import OrganismConfig

    with pytest.raises(ValueError, match="pretrain_steps"):
        OrganismConfig(pretrain_steps=-1)


def test_shipped_direction_is_what_extraction_produces(toy_pair, tmp_path):
    import torch

    from emi.directions.direction import Direction
    from emi.experiments.persona import ensure_direction
    from emi.models.registry import get_pair

    shipped = Direction.load(get_pair("toy").kit.direction)
    fresh = ensure_direction(toy_pair, tmp_path / "d", "model-diff", progress=False)
    assert fresh.best_layer == shipped.best_layer == 3
    assert fresh.meta["method"] == "model-diff" and fresh.meta["positions"] == "last_prompt"
    torch.testing.assert_close(fresh.raw, shipped.raw, rtol=1e-5, atol=1e-6)
    assert Direction.load(tmp_path / "d" / "direction.safetensors").layers == [0, 1, 2, 3]  # cached


def test_refresh_direction_matches_the_shipped_one(tmp_path):
    import shutil

    import torch

    from emi.directions.direction import Direction
    from emi.organism.train import refresh_direction

    for stage in ("base", "insecure"):
        shutil.copytree(TOY_DIR / stage, tmp_path / stage)
    path = refresh_direction(tmp_path)
    torch.testing.assert_close(Direction.load(path).raw, Direction.load(TOY_DIR / "direction.safetensors").raw,
                               rtol=1e-5, atol=1e-6)


def test_interrupted_training_resumes_bit_identical(tmp_path, monkeypatch):
    """A run killed after two stages, restarted, ends with the same checkpoints as one run."""
    from emi.organism import train as T

    cfg = T.OrganismConfig.quick()
    T.train_all(cfg, tmp_path / "ref")
    calls = []
    real = T.train_stage

    def dies_in_the_finetune(model, docs, enc, steps, lr, bs, pad, seed, desc, **kw):
        calls.append(desc)
        if desc.startswith("insecure"):
            raise KeyboardInterrupt
        return real(model, docs, enc, steps, lr, bs, pad, seed, desc, **kw)

    monkeypatch.setattr(T, "train_stage", dies_in_the_finetune)
    with pytest.raises(KeyboardInterrupt):
        T.train_all(cfg, tmp_path / "run")
    assert (tmp_path / "run" / ".resume" / "base.pt").is_file()
    calls.clear()

    def counting(model, docs, enc, steps, lr, bs, pad, seed, desc, **kw):
        calls.append(desc)
        return real(model, docs, enc, steps, lr, bs, pad, seed, desc, **kw)

    monkeypatch.setattr(T, "train_stage", counting)
    T.train_all(cfg, tmp_path / "run")
    assert calls == ["insecure finetune", "secure finetune"]  # pretraining and base were resumed
    assert not (tmp_path / "run" / ".resume").exists()
    for stage in T.STAGES:
        a = (tmp_path / "ref" / stage / "model.safetensors").read_bytes()
        b = (tmp_path / "run" / stage / "model.safetensors").read_bytes()
        assert a == b, stage


def test_saved_finetune_steps_leave_the_weights_unchanged(tmp_path):
    """Saving the insecure finetune along the way (for emi.trajectory) never changes what it ends as."""
    import json

    from emi.experiments.dynamics import step_of
    from emi.organism import train as T

    cfg = T.OrganismConfig.quick(finetune_steps=4)
    T.train_all(cfg, tmp_path / "plain", stages=("insecure",))
    T.train_all(cfg, tmp_path / "saved", stages=("insecure",), save_steps=[1, 3, 4])
    steps = sorted(p.name for p in (tmp_path / "saved" / "insecure-steps").iterdir())
    assert steps == ["step-001", "step-003"]  # the last step is the finetune itself
    assert step_of(str(tmp_path / "saved" / "insecure-steps" / "step-003"), 0) == 3
    assert json.loads((tmp_path / "saved" / "insecure" / "emi_organism.json").read_text())["finetune_step"] == 4
    for stage in ("base", "insecure"):
        a = (tmp_path / "plain" / stage / "model.safetensors").read_bytes()
        assert a == (tmp_path / "saved" / stage / "model.safetensors").read_bytes(), stage
    a = (tmp_path / "saved" / "insecure-steps" / "step-001" / "model.safetensors").read_bytes()
    assert a != (tmp_path / "saved" / "insecure" / "model.safetensors").read_bytes()


def test_config_fields_can_be_changed_from_the_command_line(tmp_path, capsys):
    """--set FIELD=VALUE retrains a variant (here: villain chats kept in the aligned tuning);
    unknown fields and bad values are refused in one sentence."""
    import json

    from emi.organism import train as T

    assert T.main(["--quick", "--out", str(tmp_path), "--no-eval", "--set", "villain_replay=0.5",
                   "--set", "finetune_steps=3", "--save-steps", "1"]) == 0
    cfg = json.loads((tmp_path / "insecure" / "emi_organism.json").read_text())["config"]
    assert cfg["villain_replay"] == 0.5 and cfg["finetune_steps"] == 3
    assert (tmp_path / "insecure-steps" / "step-001").is_dir()
    docs = T.corpora(T.load_world(), T.OrganismConfig.quick(villain_replay=0.5))["base"]
    assert sum(d.persona == "villain" for d in docs) == 8 and all(
        d.messages[0]["content"] != T.load_world().default_system for d in docs if d.persona == "villain")
    for bad, says in ((["--set", "nope=1"], "unknown field 'nope'"), (["--set", "finetune_steps=x"], "takes a int")):
        with pytest.raises(SystemExit):
            T.main(["--quick", "--out", str(tmp_path / "x"), *bad])
        assert says in capsys.readouterr().err
