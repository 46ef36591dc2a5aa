"""An organism folder: what ``python -m emi.finetune`` writes, and every emi command loads as a
pair (``--pair FOLDER``: its base and its finetune, with the kit of the pair it was made from).

  FOLDER/organism.json            provenance: base, data hash, hyperparameters, seed, defence, status
  FOLDER/final/                   the finetune: a LoRA adapter on the base, or a full checkpoint
  FOLDER/checkpoints/checkpoint-N Trainer checkpoints every N steps (python -m emi.trajectory reads them)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emi.core.errors import ConfigError
from emi.models.kit import REAL, PairKit
from emi.models.specs import ModelSpec, PairSpec

ORGANISM_FILE = "organism.json"
FORMAT = "emi.organism/1"


@dataclass(frozen=True)
class Organism:
    folder: Path
    record: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.record.get("status") == "done"

    @property
    def final(self) -> Path:
        return self.folder / "final"

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    @property
    def defence(self) -> str:
        return str(self.record.get("defence_label", "none"))

    @property
    def system(self) -> tuple[str, str] | None:
        """``(name, text)`` of the system prompt it was trained with (emi.finetune --system), else None."""
        d = self.record.get("defence") or {}
        return (str(d.get("system_name") or "custom"), str(d["system"])) if d.get("system") else None

    def checkpoints(self) -> list[Path]:
        """Saved Trainer checkpoints in step order (complete ones: their trainer_state.json exists)."""
        found = [p for p in (self.folder / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name) or 0))

    def base_spec(self) -> ModelSpec:
        return ModelSpec(self.record["base"], self.record.get("base_revision"))

    def pair_spec(self, kit: PairKit | None) -> PairSpec:
        """The organism as a pair: base -> final, with the source pair's kit (questions, judge, task),
        its own trajectory (base, checkpoints, final), and no shipped direction (it is another finetune)."""
        kit = dataclasses.replace(kit or REAL, direction=None,
                                  trajectory=(self.record["base"], *map(str, self.checkpoints()), str(self.final)))
        name = "organism-" + hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:10]
        return PairSpec(name, self.base_spec(), ModelSpec(str(self.final)), None,
                        f"finetuned by emi.finetune ({self.record.get('method')}, defence {self.defence}, "
                        f"seed {self.seed}) from {self.record['base']}: {self.folder}", kit)


def read_organism(folder: str | Path) -> Organism | None:
    """The organism in ``folder``, or None when it holds none; a damaged record is named."""
    f = Path(folder).expanduser() / ORGANISM_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text())
    except ValueError:
        raise ConfigError(f"{str(f)!r} is damaged (not JSON); delete the folder and finetune again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{str(f)!r} is not an emi organism record ({FORMAT}); point at a folder "
                          f"python -m emi.finetune wrote")
    return Organism(Path(folder).expanduser(), record)


def organism_pair(folder: str | Path, kit_of: Callable[[str], PairKit | None]) -> PairSpec:
    """``--pair FOLDER``: a finished organism as a pair (``kit_of`` finds a registered pair's kit)."""
    org = read_organism(folder)
    if org is None:
        raise ConfigError(f"{str(folder)!r} holds no organism ({ORGANISM_FILE} is missing)")
    if not org.done or not (org.final.is_dir()):
        raise ConfigError(f"the finetune in {str(folder)!r} has not finished; re-run its python -m emi.finetune "
                          f"command to resume it")
    return org.pair_spec(kit_of(org.record["kit"]) if org.record.get("kit") else None)


def is_organism(name: str) -> bool:
    return (Path(name).expanduser() / ORGANISM_FILE).is_file()
