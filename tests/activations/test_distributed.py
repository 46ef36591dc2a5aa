"""Data-parallel capture under torchrun (gloo, 2 CPU processes) on stand-in pairs: the store
equals the one-process store byte for byte, and a run with one rank killed resumes to it.
The one-process run and the torchrun launchers are forks of tests/faults.py's fork server (fresh
`python -m` processes with torch imported); the ranks are processes the launcher starts, as always."""

import filecmp

import pytest

from tests.standins import HANG_S, full_pair, lora_adapter, qwen_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    base, ft = full_pair(root, "qwen3", qwen_tokenizer(), seed=4)
    return {"full": (base, ft), "lora": (base, lora_adapter(root, base))}


def args(base, finetuned, out):
    return ["--base", str(base), "--finetuned", str(finetuned), "--judge", "none", "--questions", "main:plain",
            "--samples", "2", "--max-new-tokens", "6", "--positions", "all", "--shard-texts", "3",
            "--device", "cpu", "--out", str(out)]


def torchrun(server, *rest, **env):
    return server.run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *rest], env=env,
                      timeout=HANG_S)


def same_tree(a, b):
    """Every file of store a is in b with the same bytes (lock files name their pid: skipped)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != ".emi.lock")
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != ".emi.lock")
    assert any(f.name.startswith("shard-") for f in files)
    for f in files:
        assert filecmp.cmp(a / f, b / f, shallow=False), f


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_two_processes_write_the_one_process_store_and_resume_after_a_rank_is_killed(kind, pairs, tmp_path,
                                                                                    fork_server):
    base, ft = pairs[kind]
    one = fork_server.run(["-m", "emi.cache", *args(base, ft, tmp_path / "one")], timeout=HANG_S)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(fork_server, "-m", "emi.cache", *args(base, ft, tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    same_tree(tmp_path / "one", tmp_path / "two")

    killed = torchrun(fork_server, "-m", "tests.faults", "6", "emi.cache", *args(base, ft, tmp_path / "three"), EMI_FAULT_RANK="1")
    assert killed.returncode != 0
    assert list((tmp_path / "three").rglob(".rank-1"))  # rank 1's part was left behind, half done
    again = torchrun(fork_server, "-m", "emi.cache", *args(base, ft, tmp_path / "three"))
    assert again.returncode == 0, again.stderr[-2000:]
    same_tree(tmp_path / "one", tmp_path / "three")
    assert not list((tmp_path / "three").rglob(".rank-*"))  # parts are removed once assembled
