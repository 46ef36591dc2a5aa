"""emi.diff's result files as typed records, each written and read by the same class
(:class:`~emi.behaviour.records.Record`'s codec): ``adl.json`` (:class:`AdlFile`, a row per delta_j:
:class:`AdlPosition`), ``kl.json`` (:class:`KlFile`, its ranked tokens: :class:`KlToken`),
``crosscoder.json`` (:class:`CrosscoderFile`, a row per latent: :class:`Latent`), ``cosines.json``
(:class:`CosineRow` per direction) and the strength search's steps in a direction's meta
(:class:`SearchStep`). The closing EM table is emi.steer's ``results.jsonl``
(:class:`emi.experiments.conditions.ResultRow`).

The files keep the keys emi.diff has always written, in the same order. A file from before the
crosscoder's auxiliary-k loss (no ``aux_loss``, ``auxk``, ``nu_recon``) reads with those as None.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from emi.behaviour.records import Record, Row
from emi.core.atomic import write_json
from emi.core.errors import ConfigError
from emi.core.vocab import EngineName

D = TypeVar("D", bound="Document")
TokenValues = list[tuple[str, float]]
"""(token, probability) pairs, most probable first (a logit lens or a Patchscope readout)."""


def nested(kind: type[Record], many: bool = True) -> Any:
    """A field holding ``kind`` as a JSON object (``many``: a JSON array of them)."""
    meta = {"written": False, "nested": kind, "many": many}
    return field(default_factory=list, metadata=meta) if many else field(default=None, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Document(Record):
    """A results file that is one JSON object with tables nested in it (``nested`` fields)."""

    FILE: ClassVar[str] = ""
    """The file's name in an emi.diff run folder."""

    def row(self) -> dict[str, object]:
        flat = super().row()
        out: dict[str, object] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.metadata.get("nested"):
                if f.metadata["many"]:
                    out[f.name] = [x.row() for x in v]
                elif v is not None:
                    out[f.name] = v.row()
            elif f.name in flat:
                out[f.name] = flat.pop(f.name)
        return {**out, **flat}

    @classmethod
    def from_row(cls: type[D], row: Row, where: str = "a row", prefix: str = "", not_one: str | None = None) -> D:
        where = where if where != "a row" else cls.FILE
        if isinstance(row, dict):
            lacks = [f.name for f in fields(cls) if f.name not in row and (
                f.metadata.get("many") or f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)]
            if lacks:
                raise ConfigError(f"{where} is not one emi.diff wrote: it lacks {', '.join(lacks)}; re-run "
                                  f"python -m emi.diff")
        base = super().from_row(row, where, prefix, not_one)
        values: dict[str, object] = {}
        for f in fields(cls):
            kind = f.metadata.get("nested")
            if kind is None or f.name not in row:
                continue
            v = row[f.name]
            if f.metadata["many"]:
                if not isinstance(v, list):
                    raise ConfigError(f"{where}: {f.name!r} should be a list of rows, found {type(v).__name__}")
                values[f.name] = [kind.from_row(x, f"{where}: {f.name}[{i}]") for i, x in enumerate(v)]
            else:
                values[f.name] = kind.from_row(v, f"{where}: {f.name}")
        return dataclasses.replace(base, **values)

    @classmethod
    def of(cls: type[D], obj: object) -> D:
        """``obj`` itself, or the record the file's parsed JSON ``obj`` holds."""
        return obj if isinstance(obj, cls) else cls.from_row(obj, cls.FILE)  # type: ignore[arg-type]

    def write(self, out: Path) -> Path:
        path = out / self.FILE
        write_json(path, self.row())
        return path

    @classmethod
    def read(cls: type[D], path: Path) -> D:
        return cls.from_row(json.loads(path.read_text()), str(path))


@dataclass(frozen=True, kw_only=True)
class AdlPosition(Record):
    """delta_j at one position: its size, cosines, readouts and the coherent steering strength."""

    position: int
    """j: the token position the difference is taken at."""
    layer: int
    """The layer read."""
    norm: float
    """|delta_j|."""
    resid_norm: float
    """The base's mean residual norm at position j."""
    count: int
    """Texts that reached position j."""
    cosines: dict[str, float | None]
    """Cosine with the persona and model-diff directions (None where the pair has none)."""
    strength: float | None = None
    """The largest coherent steering strength on the base (None: no search)."""
    direction: str
    """Where the direction is saved."""
    logit_lens: dict[str, TokenValues]
    """Top tokens of delta_j through each role's unembedding."""
    patchscope: dict[str, TokenValues]
    """The finetune's Patchscope readout per scale."""


@dataclass(frozen=True, kw_only=True)
class AdlFile(Document):
    """``adl.json``: the activation difference lens of one run."""

    FILE: ClassVar[str] = "adl.json"
    layer: int
    """The layer read."""
    n_texts: int
    """Texts in the corpus."""
    n_tokens: int
    """Tokens read."""
    positions: list[AdlPosition] = nested(AdlPosition)
    """A row per delta_j (positions whose delta is zero are skipped)."""
    patchscope_prompt: str
    """The identity prompt the Patchscope reads through."""


@dataclass(frozen=True, kw_only=True)
class SearchStep(Record):
    """One step of the coherent-strength bisection (in a direction's ``strength_search`` meta)."""

    strength: float
    """The strength tried (absolute residual units)."""
    mean_coherent: float
    """The judge's mean coherence of the answers (nan when none scored)."""
    coherent: bool
    """mean_coherent reached the threshold."""
    engine: EngineName
    """Where the step sampled."""


@dataclass(frozen=True, kw_only=True)
class KlToken(Record):
    """A token position and how far the finetune's next-token distribution departs there."""

    source: str
    """``em:<question id>`` or ``benign:<conversation id>``."""
    position: int
    """The token's position in its text."""
    kl: float
    """KL(finetuned || base) of the next token, nats."""
    token: str
    """The token."""
    context: str
    """The text up to and with the token."""
    next_ft: str
    """The finetune's most likely next token."""
    next_base: str
    """The base's most likely next token."""
    projection: float | None = None
    """The finetune's residual shift along the persona direction (None: no persona)."""


@dataclass(frozen=True, kw_only=True)
class KlFile(Document):
    """``kl.json``: the KL ranking of one run."""

    FILE: ClassVar[str] = "kl.json"
    layer: int
    """The layer the KL direction is read at."""
    persona_layer: int
    """The layer of the persona projection."""
    spearman_kl_projection: float | None = None
    """Spearman's rho of KL with the persona projection over every token (None: no persona)."""
    n_tokens: int
    """Token positions ranked."""
    top: list[KlToken] = nested(KlToken)
    """The highest-KL tokens (at least 100)."""
    points: list[list[float | None]] = field(default_factory=list)
    """[KL, persona projection shift] at every token."""


@dataclass(frozen=True, kw_only=True)
class Latent(Record):
    """A crosscoder latent: its decoder-norm ratio, latent scaling and where it fires."""

    latent: int
    """Its index."""
    dec_norm_ratio: float
    """||d_ft|| / (||d_base|| + ||d_ft||): 1 finetune-only, 0.5 shared."""
    nu_activation: float | None = None
    """Latent scaling nu for the activation target (None: no fit)."""
    nu_error: float | None = None
    """nu for the reconstruction error with the latent added back."""
    nu_recon: float | None = None
    """nu for the reconstruction without the latent (absent in older files)."""
    frequency: float
    """Fraction of rows it fires on."""
    max_activation: float = 0.0
    """Its peak activation."""
    contexts: list[tuple[float, int, int]] = field(default_factory=list)
    """Its top activations: (activation, text index, position)."""

    @classmethod
    def from_row(cls, row: Row, where: str = "a row", prefix: str = "", not_one: str | None = None) -> Latent:
        r = super().from_row(row, where, prefix, not_one)
        return dataclasses.replace(r, contexts=[(float(a), int(t), int(p)) for a, t, p in r.contexts])


@dataclass(frozen=True, kw_only=True)
class AuxKColumns(Record):
    """The auxiliary-k loss's settings, as written (None: the defaults from d_model and the batch)."""

    k_aux: int | None = None
    alpha: float
    dead_tokens: int | None = None


@dataclass(frozen=True, kw_only=True)
class CrosscoderFile(Document):
    """``crosscoder.json``: the crosscoder of one run and every latent's statistics."""

    FILE: ClassVar[str] = "crosscoder.json"
    layer: int
    steps: int
    """Training steps taken."""
    loss: float
    """The last step's loss."""
    aux_loss: float | None = None
    """The last step's auxiliary-k loss (absent in older files)."""
    dead: int = 0
    """Latents dead at the end."""
    latents: int
    k: int
    expansion: int
    auxk: AuxKColumns | None = nested(AuxKColumns, many=False)
    """The auxiliary-k settings (absent in older files)."""
    scale: list[float]
    """The per-model activation scale."""
    top: list[Latent] = nested(Latent)
    """The finetune-specific latents shown."""
    all: list[Latent] = nested(Latent)
    """Every latent."""


@dataclass(frozen=True)
class CosineRow:
    """A row of ``cosines.json``: a direction's cosine with every direction of the table."""

    direction: str
    cosines: dict[str, float | None]

    FILE: ClassVar[str] = "cosines.json"

    def row(self) -> dict[str, object]:
        return {"direction": self.direction, **self.cosines}

    @classmethod
    def from_row(cls, row: object, where: str = FILE) -> CosineRow:
        if not isinstance(row, dict) or not isinstance(row.get("direction"), str) or not all(
                v is None or isinstance(v, int | float) and not isinstance(v, bool)
                for k, v in row.items() if k != "direction"):
            raise ConfigError(f"{where} is not a list of rows with a 'direction' and numbers; re-run python -m emi.diff")
        return cls(row["direction"], {k: None if v is None else float(v) for k, v in row.items() if k != "direction"})

    @classmethod
    def table(cls, obj: object, where: str = FILE) -> list[CosineRow]:
        """The rows of a parsed ``cosines.json`` (or the rows themselves)."""
        if not isinstance(obj, list) or not obj:
            raise ConfigError(f"{where} is not a list of rows with a 'direction'; re-run python -m emi.diff")
        return [x if isinstance(x, cls) else cls.from_row(x, where) for x in obj]

    @staticmethod
    def write(out: Path, rows: Sequence[CosineRow]) -> Path:
        path = out / CosineRow.FILE
        write_json(path, [r.row() for r in rows])
        return path
