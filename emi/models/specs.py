"""Where a pair's checkpoints live (plain records; loading is emi.models.loading, naming is emi.models.registry)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from emi.core.errors import ModelLoadError
from emi.models.kit import REAL, PairKit


@dataclass(frozen=True)
class ModelSpec:
    """Where a checkpoint lives: a hub id or folder, an optional revision, an optional adapter.

    ``adapter`` is a LoRA adapter (hub id or folder) applied on top of ``id``.
    """

    id: str
    revision: str | None = None
    adapter: str | None = None
    adapter_revision: str | None = None

    def __post_init__(self) -> None:
        if not self.id or not isinstance(self.id, str):
            raise ModelLoadError(f"a model id must be a non-empty string, found {self.id!r}")

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``"org/name"``, ``"org/name@revision"`` or a folder path."""
        if "@" in text and not os.path.exists(text):
            ident, rev = text.rsplit("@", 1)
            return cls(ident, revision=rev or None)
        return cls(text)

    def label(self) -> str:
        out = self.id + (f"@{self.revision}" if self.revision else "")
        return out + (f" + adapter {self.adapter}" if self.adapter else "")


@dataclass(frozen=True)
class PairSpec:
    name: str
    base: ModelSpec
    finetuned: ModelSpec
    control: ModelSpec | None = None
    description: str = ""
    kit: PairKit = REAL  # question sets, judge, sampling defaults, shipped direction (emi.models.kit)
