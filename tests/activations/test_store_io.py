"""Atomic writes: a full disk leaves nothing half-written and says so."""

import errno

import pytest

from emi.activations.store import write_atomic
from emi.core.errors import StoreError


def test_full_disk_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "shard-00000.safetensors"
    target.write_bytes(b"old complete shard")

    def fill_disk(tmp):
        tmp.write_bytes(b"half a sha")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match="disk is full.*re-run the same command to resume"):
        write_atomic(target, fill_disk)
    assert target.read_bytes() == b"old complete shard"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_interrupted_write_cleans_up(tmp_path):
    target = tmp_path / "manifest.json"

    def interrupted(tmp):
        tmp.write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert not target.exists() and list(tmp_path.iterdir()) == []
