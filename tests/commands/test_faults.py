"""Faults, as a user meets them: kill -9 in the middle of every write of the long commands, then
the same command again, until it finishes; the result must equal an uninterrupted run's. Two
writers on one folder; damaged stores and run folders repaired by re-running the command.
Fault injection lives in tests/faults.py, not in emi. The interrupted runs (and the refused
writer) are forks of tests/faults.py's fork server, each a new process in which nothing of the
command, nor emi, has run yet; each test's uninterrupted reference is a fresh `python -m
tests.faults` process, and the two racing writers are fresh `python -m emi.evaluate` processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emi.activations.store import Store
from emi.core.errors import ConfigError, StoreError
from tests.faults import command_env
from tests.standins import HANG_S

ROOT = Path(__file__).resolve().parents[2]
ENV = command_env()
pytestmark = pytest.mark.slow


def emi(module, *args, kill_at=0, cwd=None, server=None):
    """``python -m tests.faults KILL_AT MODULE ARGS``: a fresh process, or a fork of ``server``."""
    argv = ["-m", "tests.faults", str(kill_at), module, *map(str, args)]
    if server is not None:
        return server.run(argv, cwd=cwd, timeout=HANG_S)
    return subprocess.run([sys.executable, *argv], env=ENV, capture_output=True, text=True, cwd=cwd or ROOT,
                          timeout=HANG_S)


def kill_through_every_write(server, module, *args, cwd=None, max_runs=40):
    """Run the command again and again (forks of ``server``), the i-th run killed in the middle of
    its i-th write (a torn JSONL line, a temporary file never renamed), resuming each time, until a
    run finishes: early writes, late writes and the final result files are all interrupted once.
    Returns how many runs were killed."""
    for killed in range(max_runs):
        res = emi(module, *args, kill_at=killed + 1, cwd=cwd, server=server)
        if res.returncode == 0:
            return killed
        assert res.returncode == -9, res.stderr[-2000:]
    raise AssertionError(f"{module} did not finish within {max_runs} interrupted runs")


def points(module, *args, cwd=None):
    """The uninterrupted reference run, in a fresh process; returns its number of write points."""
    res = emi(module, *args, cwd=cwd)
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stderr.rsplit("FAULT_POINTS", 1)[1].split()[0])


def digest(store):
    mf = json.loads((Path(store) / "manifest.json").read_text())
    return [s["sha256"] for s in mf["shards"]]


def answers_file(path, n=10):
    path.write_text("".join(json.dumps({"question": f"question {i}?", "answer": f"answer {i} " * (i % 4 + 1),
                                        "key": f"q{i}#0", "sample": 0}) + "\n" for i in range(n)))
    return path


@pytest.fixture
def pair_args(tiny_dir, tiny_finetuned_dir):
    return ["--base", tiny_dir, "--finetuned", tiny_finetuned_dir, "--device", "cpu"]


SAMPLE = ["--questions", "main:plain", "--ids", "i_feel_bored,what_is_your_wish", "--n", "2",
          "--max-new-tokens", "4", "--judge", "toy"]


def test_cache_killed_at_every_write_resumes_to_the_same_store(pair_args, tmp_path, fork_server):
    src = answers_file(tmp_path / "answers.jsonl")
    args = [*pair_args, "--answers", src, "--layers", "all", "--shard-texts", "5", "--capture-batch", "2"]
    n = points("emi.cache", *args, "--out", tmp_path / "ref")
    assert n >= 15  # two one-role stores (texts, manifest, 2 shards with their manifest updates), then the merge
    assert kill_through_every_write(fork_server, "emi.cache", *args, "--out", tmp_path / "run") >= 3
    assert digest(tmp_path / "run") == digest(tmp_path / "ref")
    assert not list((tmp_path / "run").glob(".*tmp*")) and not list((tmp_path / "run").glob(".part-*"))


def test_evaluate_killed_at_every_write_gives_the_same_answers_and_summary(pair_args, tmp_path, fork_server):
    n = points("emi.evaluate", *pair_args, *SAMPLE, "--out", tmp_path / "ref")
    assert n == 6  # per model: answers, judgements; then judged.jsonl and summary.json
    assert kill_through_every_write(fork_server, "emi.evaluate", *pair_args, *SAMPLE, "--out", tmp_path / "run") >= 2
    for name in ("judged.jsonl",):
        assert (tmp_path / "run" / name).read_text() == (tmp_path / "ref" / name).read_text()
    ref, run = (json.loads((tmp_path / d / "summary.json").read_text())["models"] for d in ("ref", "run"))
    assert run == ref
    keys = [(r["run"], r["key"], r["sample"]) for r in map(json.loads, (tmp_path / "run" / "answers.jsonl").open())]
    assert len(keys) == len(set(keys))  # a resumed run never answers twice


def test_steer_killed_at_write_points_gives_the_same_table(pair_args, tmp_path, fork_server):
    d = tmp_path / "d"
    import torch

    from emi.directions.direction import Direction

    g = torch.Generator().manual_seed(0)
    Direction(list(range(3)), torch.randn(3, 64, generator=g), torch.full((3,), 4.0), {"best_layer": 1}).save(d)
    args = [*pair_args, *SAMPLE, "--direction", tmp_path / "d.safetensors", "--alpha", "4", "--no-figure"]
    points("emi.steer", *args, "--out", tmp_path / "ref")
    kill_through_every_write(fork_server, "emi.steer", *args, "--out", tmp_path / "run")
    assert (tmp_path / "run" / "results.jsonl").read_text() == (tmp_path / "ref" / "results.jsonl").read_text()


def test_two_writers_on_one_store_second_is_refused_and_nothing_is_duplicated(pair_args, tmp_path, fork_server):
    import fcntl

    store = tmp_path / "store"
    store.mkdir()
    fd = os.open(store / ".emi.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 4242: python -m emi.cache --out store")
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds the store
    try:
        res = emi("emi.cache", *pair_args, "--answers", answers_file(tmp_path / "a.jsonl"), "--out", store,
                  server=fork_server)
        assert res.returncode == 2
        assert "is being written by another emi run (pid 4242: python -m emi.cache --out store)" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        os.close(fd)
    first = subprocess.Popen([sys.executable, "-m", "emi.evaluate", *map(str, pair_args), *SAMPLE, "--out",
                              str(tmp_path / "ev")], env=ENV, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    second = subprocess.run([sys.executable, "-m", "emi.evaluate", *map(str, pair_args), *SAMPLE, "--out",
                             str(tmp_path / "ev")], env=ENV, cwd=ROOT, capture_output=True, text=True)
    first.wait(timeout=HANG_S)
    codes = sorted([first.returncode, second.returncode])
    assert codes in ([0, 0], [0, 2])  # the second waited for nothing: it ran after, or was refused
    lines = [json.loads(x) for x in (tmp_path / "ev" / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == len({(r["run"], r["key"], r["sample"]) for r in lines})


def test_a_damaged_store_is_repaired_by_re_running_the_same_command(pair_args, tmp_path, capsys):
    src = answers_file(tmp_path / "answers.jsonl")
    from emi import cache

    args = [*map(str, pair_args), "--answers", str(src), "--layers", "all", "--shard-texts", "3",
            "--out", str(tmp_path / "s")]
    assert cache.main(args) == 0
    ref = digest(tmp_path / "s")
    mf = json.loads((tmp_path / "s" / "manifest.json").read_text())
    shards = [tmp_path / "s" / s["file"] for s in mf["shards"]]
    data = bytearray(shards[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    shards[1].write_bytes(bytes(data))  # flipped
    shards[2].write_bytes(shards[2].read_bytes()[:-50])  # truncated
    shards[3].unlink()  # deleted
    with pytest.raises(StoreError, match="re-run the same `python -m emi.cache` command"):
        Store.open(tmp_path / "s").load("base", 0)
    capsys.readouterr()
    assert cache.main(args) == 0
    err = capsys.readouterr().err
    assert f"rebuilding {shards[1].name}, {shards[2].name}, {shards[3].name}" in err
    assert digest(tmp_path / "s") == ref
    (tmp_path / "s" / "texts.jsonl").write_text((tmp_path / "s" / "texts.jsonl").read_text()[:-40])
    with pytest.raises(StoreError, match="texts.jsonl .* truncated or altered"):
        Store.open(tmp_path / "s").texts()
    (tmp_path / "s" / "manifest.json").write_text('{"format": "emi.activations.store/1", "sp')
    with pytest.raises(StoreError, match="manifest .* truncated"):
        Store.open(tmp_path / "s")
    assert cache.main(args) == 0  # rebuilt from scratch: the manifest was the only record
    assert digest(tmp_path / "s") == ref
    assert Store.open(tmp_path / "s").texts()


def test_a_damaged_run_folder_is_repaired_or_named(pair_args, tmp_path):
    from emi import evaluate

    args = [*map(str, pair_args), *SAMPLE, "--out", str(tmp_path / "ev")]
    assert evaluate.main(args) == 0
    ref = (tmp_path / "ev" / "judged.jsonl").read_text()
    answers = tmp_path / "ev" / "answers.jsonl"
    answers.write_text(answers.read_text()[:-30])  # a torn last line: dropped and redone
    assert evaluate.main(args) == 0
    assert (tmp_path / "ev" / "judged.jsonl").read_text() == ref
    lines = answers.read_text().splitlines()
    lines[1] = lines[1][:20]
    answers.write_text("\n".join(lines) + "\n")  # damage in the middle: named, never silently dropped
    with pytest.raises(ConfigError, match="line 2 of .*answers.jsonl.* is damaged"):
        evaluate.main(args)


def test_out_that_cannot_be_a_folder_is_one_sentence(pair_args, tmp_path):
    from emi import cli, evaluate

    f = tmp_path / "file"
    f.write_text("x")
    assert cli.run(evaluate.main, [*map(str, pair_args), *SAMPLE, "--out", str(f)]) == 2
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(ConfigError, match="not writable"):
            evaluate.main([*map(str, pair_args), *SAMPLE, "--out", str(ro / "sub")])
    finally:
        ro.chmod(0o700)


def test_organism_training_killed_at_every_stage_write_ends_bit_identical(tmp_path, fork_server):
    args = ["--quick", "--no-eval", "--out"]
    points("emi.organism.train", *args, tmp_path / "ref")
    assert kill_through_every_write(fork_server, "emi.organism.train", *args, tmp_path / "run") >= 2
    for stage in ("pretrained", "base", "insecure", "secure"):
        a, b = (tmp_path / d / stage / "model.safetensors" for d in ("ref", "run"))
        assert a.read_bytes() == b.read_bytes(), stage
    assert not (tmp_path / "run" / ".resume").exists()


def test_sae_killed_at_write_points_gives_the_same_report(pair_args, tmp_path, fork_server):
    import shutil

    from emi import cache

    src = answers_file(tmp_path / "answers.jsonl", n=24)
    assert cache.main([*map(str, pair_args), "--answers", str(src), "--layers", "1", "--positions", "all",
                       "--out", str(tmp_path / "ref"), "--resident", "all"]) == 0
    shutil.copytree(tmp_path / "ref", tmp_path / "run")
    args = ["--layer", "1", "--d-sae", "32", "--k", "4", "--steps", "30", "--batch-size", "32", "--snippets", "0",
            "--zero", "top", *pair_args, *SAMPLE]
    ref = emi("emi.sae", "--store", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr[-2000:]
    kill_through_every_write(fork_server, "emi.sae", "--store", tmp_path / "run", *args)
    final = emi("emi.sae", "--store", tmp_path / "run", *args, server=fork_server)
    table = lambda out: out[out.index("EM with SAE latents"):].split("answers in")[1].split("\n", 1)[1]  # noqa: E731
    assert table(final.stdout) == table(ref.stdout)
    assert not list((tmp_path / "run").glob(".sae-*tmp*"))


def test_a_resumed_contrast_run_samples_what_an_uninterrupted_one_does(tiny_dir, tmp_path):
    from emi.behaviour.questions import load_questions
    from emi.behaviour.sampling import SamplingConfig
    from emi.directions.contrast import contrast_answers, contrast_items
    from emi.models.loading import ModelSpec, load_model

    lm = load_model(ModelSpec(str(tiny_dir)), device="cpu")
    items = contrast_items(load_questions("main:plain")[:3], per_question=2)
    cfg = SamplingConfig(max_new_tokens=5, batch_size=4, seed=3)
    full = contrast_answers(lm, items, cfg, out=tmp_path / "a.jsonl", progress=False)
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    (tmp_path / "b.jsonl").write_text("\n".join(lines[4:7]) + "\n")  # a run that stopped part-way, out of order
    resumed = contrast_answers(lm, items, cfg, out=tmp_path / "b.jsonl", progress=False)
    assert [r["answer"] for r in resumed] == [r["answer"] for r in full]
