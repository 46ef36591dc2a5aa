"""Data parallelism under torchrun: which slice of the work this process does.

``torchrun --nproc-per-node N -m emi.cache ...`` starts N processes with RANK, LOCAL_RANK and
WORLD_SIZE set; :func:`ranks` joins them into one process group (NCCL on GPUs, gloo on CPUs) and
says which rank this is. Outside torchrun it returns the single rank 0 of 1 and touches nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from emi.core.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether this rank does work item ``index`` (round robin)."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def device(self, requested: str | None) -> str | None:
        """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is asked for (or the default) and there."""
        if self.world > 1 and torch.cuda.is_available() and requested in (None, "cuda"):
            return f"cuda:{self.local_rank}"
        return requested


SINGLE = Ranks()


def ranks() -> Ranks:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    try:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE is set but RANK is not: start data-parallel runs with torchrun "
                          "--nproc-per-node N -m emi.cache ...") from None
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend=backend)
    return Ranks(rank, world, local)
