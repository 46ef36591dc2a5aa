"""Check first, then run: a sweep of bad invocations across every command.

After each: exit status 2, one ``emi: error:`` sentence and no traceback, the working folder
(--out, --root and every input) byte-for-byte as it was, and no weights loaded (the weight
loaders are patched to fail the test). For a few, the corrected command then runs on the same
--out. Each refusal's wall time is printed in a table at the end (``pytest -s``) and recorded as
a junit property; it is reported, never asserted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from emi import (
    cache,
    cli,
    defences,
    evaluate,
    export,
    extract,
    figures,
    finetune,
    rejudge,
    sae,
    screen,
    steer,
    trajectory,
)
from emi.directions.direction import Direction
from tests.standins import full_pair, lora_adapter

MAINS = {"evaluate": evaluate.main, "steer": steer.main, "cache": cache.main, "extract": extract.main, "sae": sae.main,
         "trajectory": trajectory.main, "export": export.main, "rejudge": rejudge.main, "finetune": finetune.main,
         "screen": screen.main, "defences": defences.main, "figures": figures.main}
TIMES: list[tuple[str, str, float]] = []
CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


def _edited(src: Path, dst: Path, **config) -> Path:
    """A copy of checkpoint ``src`` whose config.json says otherwise (its weights are never loaded)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    return dst


def _direction(path: Path, width: int, layers: list[int]) -> str:
    Direction(layers, torch.randn(len(layers), width), torch.ones(len(layers)),
              {"best_layer": layers[0], "method": "test"}).save(path)
    return str(path.with_suffix(".safetensors"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


@pytest.fixture(scope="module")
def m(tmp_path_factory, toy_tokenizer):
    """Stand-in models (random-weight Qwen2, full and LoRA) and the files the cases point at."""
    root = tmp_path_factory.mktemp("sweep-models")
    base, ft = full_pair(root, "qwen2", toy_tokenizer)  # 4 layers, d_model 64
    lora = lora_adapter(root, base)
    wide = _edited(ft, root / "wide", hidden_size=96)
    vocab = _edited(ft, root / "vocab", vocab_size=4096)
    two2 = dict(num_hidden_layers=2, layer_types=["full_attention"] * 2)
    two, two_ft = _edited(base, root / "two", **two2), _edited(ft, root / "two-ft", **two2)
    foreign = root / "foreign-lora"  # an adapter trained on a base of another width
    shutil.copytree(lora, foreign)
    acfg = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**acfg, "base_model_name_or_path": str(wide)}))
    nothing = root / "not-a-model"
    nothing.mkdir()
    (nothing / "README.md").write_text("weights went elsewhere\n")
    files = root / "files"
    files.mkdir()
    (files / "empty.jsonl").write_text("")
    (files / "empty.yaml").write_text("")
    (files / "broken.yaml").write_text("- id: q1\n  paraphrases: [unclosed\n")
    (files / "broken.jsonl").write_text('{"messages": [\n')
    (files / "chat.jsonl").write_text(CHAT + "\n")
    (files / "notjson.json").write_text("{nope")
    (files / "labels.jsonl").write_text(json.dumps({"model": "nobody", "key": "k", "sample": 0, "aligned": 50}) + "\n")
    run = root / "run"  # a finished evaluate run folder, as rejudge reads it
    run.mkdir()
    (run / "answers.jsonl").write_text(json.dumps({"model": "finetuned", "run": "r", "key": "q1", "sample": 0,
                                                   "question": "q?", "answer": "a."}) + "\n")
    from emi.behaviour.metrics import summarize
    from emi.core.atomic import dumps

    (run / "summary.json").write_text(dumps({"pair": "toy", "judge": "toy", "models": [summarize([], "finetuned").row()]}))
    from tests.commands.test_bad_input import few_answer_store

    store = few_answer_store(root / "store")[0].path  # d_model 8, layers 0 and 1
    return {"store": str(store), "base": str(base), "ft": str(ft), "lora": str(lora), "wide": str(wide), "vocab": str(vocab),
            "two": str(two), "two_ft": str(two_ft), "foreign": str(foreign), "nothing": str(nothing),
            "d32": _direction(root / "d32", 32, [0, 1]), "d64": _direction(root / "d64", 64, [0, 1]),
            "deep128": _direction(root / "deep128", 128, [0, 7]), "f": files, "run": str(run),
            "port": _closed_port(), "root": root}


def _models(m, ft: str = "ft", base: str = "base") -> list[str]:
    return ["--base", m[base], "--finetuned", m[ft]]


def _pair(m, ft: str = "ft", base: str = "base") -> list[str]:
    """A custom pair with a judge that needs no server, answers short enough for its context."""
    return [*_models(m, ft, base), "--judge", "toy", "--max-new-tokens", "8"]


TOY_JUDGE = ["--judge", "toy", "--max-new-tokens", "8"]
# (command, case, argv builder(m, work) -> argv, what the sentence must say)
CASES = [
    ("evaluate", "finetuned folder missing", lambda m, w: _pair(m) + ["--finetuned", str(w / "gone")],
     "does not exist"),
    ("evaluate", "finetuned folder holds no config", lambda m, w: _pair(m, "nothing"), "neither config.json"),
    ("evaluate", "finetune of another width", lambda m, w: _pair(m, "wide"), "differ in hidden size (64 vs 96)"),
    ("evaluate", "finetune of another vocabulary", lambda m, w: _pair(m, "vocab"), "differ in vocabulary size"),
    ("evaluate", "base is a folder without a model", lambda m, w: _pair(m, "ft", "nothing"), "neither config.json"),
    ("evaluate", "adapter trained on another base", lambda m, w: _pair(m, "foreign"), "was trained on"),
    ("evaluate", "empty question file", lambda m, w: ["--questions", str(m["f"] / "empty.yaml")], "question"),
    ("evaluate", "malformed question file", lambda m, w: ["--questions", str(m["f"] / "broken.yaml")],
     "is not valid YAML"),
    ("evaluate", "custom pair, default judge, no key", lambda m, w: _models(m), "no API key"),
    ("evaluate", "judge endpoint unreachable on loopback",
     lambda m, w: _models(m) + ["--max-new-tokens", "8", "--judge", "openai", "--judge-url", f"http://127.0.0.1:{m['port']}/v1",
                                  "--judge-timeout", "5"], "did not answer one short request within --judge-timeout"),
    ("evaluate", "unknown question id", lambda m, w: ["--ids", "no-such-question"], "no-such-question"),
    ("steer", "--layers 5 on a 2-layer pair", lambda m, w: _pair(m, "two_ft", "two") + ["--layers", "5"],
     "--layers 5: layer 5 is out of range: the base"),
    ("steer", "--layers 9 on the toy", lambda m, w: ["--layers", "9"], "--layers 9: layer 9 is out of range"),
    ("steer", "--ablate-layers out of range", lambda m, w: ["--ablate-layers", "7"], "--ablate-layers 7: layer 7"),
    ("steer", "direction of another width", lambda m, w: _pair(m) + ["--direction", m["d32"]],
     "the direction has width 32"),
    ("steer", "direction deeper than the model", lambda m, w: ["--direction", m["deep128"]], "has layer 7"),
    ("steer", "LoRA adapter on another base", lambda m, w: _pair(m, "foreign"), "was trained on"),
    ("steer", "unknown --targets", lambda m, w: ["--targets", "control"], "unknown --targets"),
    ("steer", "benign set file missing", lambda m, w: ["--benign", str(w / "gone.yaml")], "does not exist"),
    ("steer", "engine environment missing", lambda m, w: ["--engine", "vllm", "--vllm-python", str(w / "no-python")],
     "no-python"),
    ("evaluate", "server engine without its URL", lambda m, w: ["--engine", "server"], "--engine-url"),
    ("cache", "--engine-url without --engine server",
     lambda m, w: ["--engine-url", "http://127.0.0.1:9/v1", "--answers", str(m["f"] / "chat.jsonl")], "--engine server"),
    ("cache", "--layers 5 on a 2-layer pair",
     lambda m, w: _pair(m, "two_ft", "two") + ["--layers", "5", "--answers", str(m["f"] / "chat.jsonl")],
     "--layers 5: layer 5 is out of range"),
    ("cache", "empty answers file", lambda m, w: ["--answers", str(m["f"] / "empty.jsonl")], "holds no answers"),
    ("cache", "answers file missing", lambda m, w: ["--answers", str(w / "gone.jsonl")], "gone.jsonl"),
    ("cache", "finetune of another vocabulary",
     lambda m, w: _pair(m, "vocab") + ["--answers", str(m["f"] / "chat.jsonl")], "differ in vocabulary size"),
    ("cache", "malformed answers file", lambda m, w: ["--answers", str(m["f"] / "broken.jsonl")], "broken.jsonl"),
    ("extract", "store missing", lambda m, w: ["--store", str(w / "no-store")], "no-store"),
    ("extract", "store is a file", lambda m, w: ["--store", str(m["f"] / "chat.jsonl")], "chat.jsonl"),
    ("extract", "--layers not in the store", lambda m, w: ["--store", m["store"], "--layers", "7"], "7"),
    ("extract", "--compare direction of another width", lambda m, w: ["--store", m["store"], "--compare", m["d32"]],
     "the direction has width 32"),
    ("sae", "--layer not in the store", lambda m, w: ["--store", m["store"], "--layer", "5"], "5"),
    ("sae", "--zero with a custom pair and no judge key",
     lambda m, w: ["--store", m["store"], "--layer", "0", "--zero", "top", "--steps", "1", *_models(m)], "no API key"),
    ("sae", "store missing", lambda m, w: ["--store", str(w / "no-store"), "--layer", "1"], "no-store"),
    ("trajectory", "checkpoint 3 missing",
     lambda m, w: ["--base", m["base"], "--checkpoints", f"{m['ft']},{m['ft']},{w / 'ckpt-3'}", *TOY_JUDGE],
     "checkpoint 3 of 3"),
    ("trajectory", "checkpoint 2 of 3 missing",
     lambda m, w: ["--base", m["base"], "--checkpoints", f"{m['ft']},{w / 'ckpt-2'},{m['ft']}", *TOY_JUDGE],
     "checkpoint 2 of 3"),
    ("trajectory", "one checkpoint only", lambda m, w: ["--base", m["base"], "--checkpoints", m["ft"], *TOY_JUDGE],
     "at least two checkpoints"),
    ("trajectory", "checkpoint of another width",
     lambda m, w: ["--base", m["base"], "--checkpoints", f"{m['ft']},{m['wide']}", *TOY_JUDGE],
     "differ in hidden size"),
    ("trajectory", "checkpoint folder without a model",
     lambda m, w: ["--base", m["base"], "--checkpoints", f"{m['nothing']},{m['ft']}", *TOY_JUDGE],
     "neither config.json"),
    ("trajectory", "direction of another width", lambda m, w: ["--direction", m["d32"]], "the direction has width 32"),
    ("export", "--out not empty", lambda m, w: ["--out", str(w.parent / "inputs")], "not an empty folder"),
    ("export", "finetuned folder missing", lambda m, w: _models(m)[:2] + ["--finetuned", str(w / "gone")],
     "does not exist"),
    ("export", "direction of another width", lambda m, w: _models(m) + ["--direction", m["d32"]],
     "the direction has width 32"),
    ("rejudge", "run folder missing", lambda m, w: [str(w / "no-run"), "--judge", "toy"], "holds no answers.jsonl"),
    ("rejudge", "labels naming no answer",
     lambda m, w: [m["run"], "--judge", "toy", "--labels", str(m["f"] / "labels.jsonl")], "names an answer"),
    ("rejudge", "labels file malformed", lambda m, w: [m["run"], "--judge", "toy", "--labels", str(m["f"] / "broken.jsonl")],
     "broken.jsonl"),
    ("rejudge", "no --judge", lambda m, w: [m["run"]], "name the judge"),
    ("finetune", "caft direction of another width",
     lambda m, w: [str(m["f"] / "chat.jsonl"), "--base", m["base"], "--defence", "caft", "--direction", m["d32"]],
     "the direction has width 32"),
    ("finetune", "--steer-layers 9 on a 4-layer model",
     lambda m, w: [str(m["f"] / "chat.jsonl"), "--base", m["base"], "--defence", "steer", "--direction", m["d64"],
                   "--steer-alpha", "4", "--steer-layers", "9"], "--steer-layers 9 is out of range"),
    ("finetune", "--lora-layers out of range",
     lambda m, w: [str(m["f"] / "chat.jsonl"), "--base", m["base"], "--lora-layers", "7"], "--lora-layers 7"),
    ("finetune", "empty data", lambda m, w: [str(m["f"] / "empty.jsonl"), "--base", m["base"]], "empty.jsonl"),
    ("finetune", "malformed data", lambda m, w: [str(m["f"] / "broken.jsonl"), "--base", m["base"]], "broken.jsonl"),
    ("finetune", "base folder missing", lambda m, w: [str(m["f"] / "chat.jsonl"), "--base", str(w / "gone")],
     "does not exist"),
    ("screen", "data missing", lambda m, w: [str(w / "gone.jsonl")], "gone.jsonl"),
    ("screen", "direction of another width", lambda m, w: [str(m["f"] / "chat.jsonl"), "--direction", m["d32"]],
     "the direction has width 32"),
    ("defences", "folder holds no organism", lambda m, w: [m["nothing"]], "holds no organism"),
    ("figures", "result file missing", lambda m, w: [str(w / "gone.jsonl")], "no result files"),
    ("figures", "a file that is no result", lambda m, w: [str(m["f"] / "notjson.json")], "none of the given files"),
]
OUT_FLAG = {"rejudge": None, "extract": None, "export": "--out"}  # rejudge writes in its run folder; extract beside
# the store


def _snapshot(*folders: Path) -> dict[str, str]:
    """Every file and folder under ``folders``, with its bytes' hash."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def no_weights(monkeypatch):
    """Loading any weights fails the test: a refusal must come from configs and files alone."""
    import peft
    import transformers

    from emi.models import loading

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(loading, "_load_full", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", refuse)


@pytest.fixture(scope="module", autouse=True)
def timing_table():
    yield
    if TIMES:
        print(f"\nrefusals: {len(TIMES)} (wall time each)")
        for command, case, s in TIMES:
            print(f"  {s * 1000:7.0f} ms  emi.{command}: {case}")


def _workdir(tmp_path: Path) -> Path:
    inputs = tmp_path / "inputs"  # a non-empty folder (export's --out case)
    inputs.mkdir()
    (inputs / "keep.txt").write_text("mine\n")
    work = tmp_path / "work"
    work.mkdir()
    return work


def refuse(command: str, argv: list[str], work: Path, m, capsys, monkeypatch, expect: str) -> tuple[float, str]:
    capsys.readouterr()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(work)  # defaults like runs/ and activations/ land in the snapshot
    before = _snapshot(work.parent, m["root"])
    start = time.perf_counter()
    with monkeypatch.context() as mp:
        no_weights(mp)
        rc = cli.run(MAINS[command], argv)
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("emi: error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert expect in errors[0], errors[0]
    assert _snapshot(work.parent, m["root"]) == before, f"{command} {argv} changed the filesystem"
    return took, errors[0]


@pytest.mark.parametrize("command, case, argv, expect", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_bad_invocation_is_refused_leaving_nothing_behind(m, tmp_path, capsys, monkeypatch, record_property,
                                                            command, case, argv, expect):
    work = _workdir(tmp_path)
    args = argv(m, work)
    if command in ("evaluate", "steer", "trajectory", "cache", "screen", "defences", "finetune", "figures", "export") \
            and "--out" not in args:
        args += ["--out", str(work / "out")]
    if command in ("steer", "cache", "trajectory"):
        args += ["--root", str(work / "root")]
    took, _ = refuse(command, args, work, m, capsys, monkeypatch, expect)
    TIMES.append((command, case, took))
    record_property("refusal_s", round(took, 3))


def test_the_sweep_covers_every_command_forty_times():
    assert {c[0] for c in CASES} == set(MAINS) and len(CASES) >= 40


FT = ["--steps", "1", "--batch-size", "1", "--max-len", "64", "--threads", "1"]


@pytest.mark.slow
def test_a_refused_finetune_then_the_corrected_one_runs_on_the_same_out(m, tmp_path, capsys, monkeypatch):
    """The trap of issue 30: a typo in --steer-layers or a direction of another width left
    seed-0/organism.json (status training) and a lock, and the fixed command was refused."""
    work = _workdir(tmp_path)
    out = str(work / "ft")
    data = str(m["f"] / "chat.jsonl")
    common = [data, "--base", m["base"], "--out", out, *FT]
    refuse("finetune", [*common, "--defence", "steer", "--direction", m["d64"], "--steer-alpha", "4",
                        "--steer-layers", "9"], work, m, capsys, monkeypatch, "--steer-layers 9")
    refuse("finetune", [*common, "--defence", "caft", "--direction", m["d32"]], work, m, capsys, monkeypatch,
           "width 32")
    assert cli.run(finetune.main, [*common, "--defence", "steer", "--direction", m["d64"], "--steer-alpha", "4",
                                   "--steer-layers", "1"]) == 0
    org = json.loads((work / "ft" / "seed-0" / "organism.json").read_text())
    assert org["status"] == "done" and not (work / "ft" / "seed-0" / ".emi.lock").exists()
    # other settings on the same --out: described old -> new, with the flag that starts it over
    _, said = refuse("finetune", [*common, "--lr", "0.001"], work, m, capsys, monkeypatch, "config.lr 0.0001 -> 0.001")
    assert "add --restart to start it over" in said
    assert cli.run(finetune.main, [*common, "--lr", "0.001", "--restart"]) == 0
    org = json.loads((work / "ft" / "seed-0" / "organism.json").read_text())
    assert org["status"] == "done" and org["config"]["lr"] == 0.001 and org["defence"]["kind"] == "none"


@pytest.mark.slow
def test_a_refused_steer_then_the_corrected_one_runs_on_the_same_out(m, tmp_path, capsys, monkeypatch):
    work = _workdir(tmp_path)
    args = ["--n", "1", "--ids", "quick_buck", "--max-new-tokens", "8", "--no-side-effects", "--no-figure",
            "--out", str(work / "st"), "--root", str(work / "root")]
    refuse("steer", [*args, "--layers", "9"], work, m, capsys, monkeypatch, "--layers")
    assert cli.run(steer.main, [*args, "--layers", "1"]) == 0
    assert (work / "st" / "results.jsonl").is_file() and not (work / "st" / ".emi.lock").exists()


def test_a_refusal_inside_the_lock_removes_the_folders_it_made_and_the_lock(tmp_path):
    from emi.core import locks
    from emi.core.errors import ConfigError

    with pytest.raises(ConfigError), locks.exclusive(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / ".emi.lock").is_file()
        raise ConfigError("no")
    assert list(tmp_path.iterdir()) == []
    with locks.exclusive(tmp_path / "kept"):
        (tmp_path / "kept" / "x").write_text("work")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["x"]  # work kept, lock file gone


def test_a_lock_held_after_its_process_died_names_the_command_that_clears_it(tmp_path):
    import fcntl
    import os

    from emi.core import locks
    from emi.core.errors import ConfigError

    folder = tmp_path / "run"
    folder.mkdir()
    fd = os.open(folder / ".emi.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 999999999: python -m emi.steer")  # a pid no process has; its fd held here (a child's)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(ConfigError, match=r"no longer running.*clear the stale lock with: rm '.*\.emi\.lock'"):
            with locks.exclusive(folder):
                pass
    finally:
        os.close(fd)
    with locks.exclusive(folder):  # released: the next run takes it
        pass
