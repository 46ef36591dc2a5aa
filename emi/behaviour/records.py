"""Results tables as typed records: each table's row is one frozen dataclass that writes its line
(:meth:`Record.row`) and reads it back (:meth:`Record.from_row`), so no caller edits a row by key
or re-parses a column name. The files keep the columns emi has always written.

How a field becomes columns (the type hint says):
  ``Rate``        five columns ``<f>_rate, _lo, _hi, _k, _n`` (:meth:`Rate.columns`)
  ``Estimate``    three columns ``<f>, <f>_lo, <f>_hi`` (a mean with its bootstrap interval)
  a ``Record``    its own columns, inline, each behind the field's ``prefix`` metadata
  ``Literal``     the value, checked against its words (emi.core.vocab) when read
  ``float``       null in the file (strict JSON) is nan in memory, as when written
  ``more``        columns the record does not name (another writer's), kept so a row round-trips
A Rate, Estimate or record field that is ``X | None`` is absent from the row when None, and so is
any field made with :func:`absent_when_none` (a column only some rows of a table have); a field
with ``metadata={"written": False}`` lives in memory only.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import (
    Any,
    ClassVar,
    Literal,
    NamedTuple,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from emi.behaviour.metrics import JudgeColumns, Rate, Summary
from emi.core.errors import ConfigError
from emi.core.vocab import Denominator, check

Row = Mapping[str, Any]
"""A line of a results file, as JSON gives it."""
T = TypeVar("T", bound="Record")


class Estimate(NamedTuple):
    """A mean with its 95% interval, written as ``<f>``, ``<f>_lo``, ``<f>_hi``."""

    value: float
    lo: float
    hi: float

    @classmethod
    def of(cls, t: tuple[float, float, float]) -> Estimate:
        return cls(float(t[0]), float(t[1]), float(t[2]))

    def fmt(self, spec: str = ".3f") -> str:
        return f"{self.value:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


NAN3 = Estimate(float("nan"), float("nan"), float("nan"))


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of ``X | None``."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(get_args(hint))
    return hint, False


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


_COLUMNED = (Rate, Estimate)


def _is_record(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Record)


def absent_when_none() -> Any:
    """A field ``X | None = None`` whose column is absent from the row when None (and None when absent)."""
    return field(default=None, metadata={"omit_none": True})


def _float(x: object) -> float:
    return float("nan") if x is None else float(x)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Record:
    """Base of every results record; subclasses are frozen dataclasses with a docstring per field."""

    NOT_ONE: ClassVar[str] = "this is not a row emi wrote (or it is damaged: re-run the command that wrote it)"
    """What a row that lacks a column is told."""

    def row(self) -> dict[str, object]:
        """The record's line of its results file."""
        out: dict[str, object] = {}
        for f in fields(self):
            v, name = getattr(self, f.name), f.metadata.get("prefix", "") + f.name
            kind = _unwrap(_hints(type(self))[f.name])[0]
            if f.name == "more":
                out.update(v)
            elif not f.metadata.get("written", True) or v is None and (
                    kind in _COLUMNED or _is_record(kind) or f.metadata.get("omit_none")):
                continue
            elif isinstance(v, Rate):
                out.update(v.columns(name))
            elif isinstance(v, Estimate):
                out.update({name: v.value, f"{name}_lo": v.lo, f"{name}_hi": v.hi})
            elif isinstance(v, Record):
                out.update({f.metadata.get("prefix", "") + k: x for k, x in v.row().items()})
            else:
                out[name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_row(cls: type[T], row: Row, where: str = "a row", prefix: str = "", not_one: str | None = None) -> T:
        """The record ``row`` holds; a missing required column or a wrong value is a ConfigError
        naming ``where`` and the column (and ``not_one``, the outer record's sentence, for a nested one)."""
        not_one = not_one or cls.NOT_ONE
        if not isinstance(row, Mapping):
            raise ConfigError(f"{where}: a result row is a JSON object, found {type(row).__name__}")
        values: dict[str, object] = {}
        used: set[str] = set()
        for f in fields(cls):
            kind, optional = _unwrap(_hints(cls)[f.name])
            name = prefix + f.metadata.get("prefix", "") + f.name
            if f.name == "more" or not f.metadata.get("written", True):
                continue
            if kind is Rate:
                cols = {c: f"{name}_{c}" for c in ("rate", "lo", "hi", "k", "n")}
                used.update(cols.values())
                if optional and cols["rate"] not in row and cols["n"] not in row:
                    values[f.name] = None
                    continue
                for c in ("rate", "n"):
                    if cols[c] not in row:
                        raise ConfigError(f"{where}: no {cols[c]!r} column; {not_one}")
                for c, t in zip(cols.values(), (float, float, float, int, int), strict=True):
                    if c in row:
                        _read(row[c], t | None if t is float else t, f"{where}: column {c!r}")
                values[f.name] = Rate.from_columns(row, name)
            elif kind is Estimate:
                used.update((name, f"{name}_lo", f"{name}_hi"))
                if name not in row:
                    if not optional and f.default is MISSING:
                        raise ConfigError(f"{where}: no {name!r} column; {not_one}")
                    values[f.name] = None if optional else f.default
                else:
                    values[f.name] = Estimate(_float(row[name]), _float(row.get(f"{name}_lo")),
                                              _float(row.get(f"{name}_hi")))
            elif _is_record(kind):
                pre = prefix + f.metadata.get("prefix", "")
                if optional and pre + fields(kind)[0].name not in row:
                    values[f.name] = None
                    continue
                sub = kind.from_row(row, where, prefix=pre, not_one=not_one)
                used.update(pre + k for k in sub.row())
                values[f.name] = sub
            elif name in row:
                values[f.name] = _read(row[name], _hints(cls)[f.name], f"{where}: column {name!r}")
                used.add(name)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{where}: no {name!r} column; {not_one}")
        if "more" in {f.name for f in fields(cls)}:
            values["more"] = {k: v for k, v in row.items() if k not in used}
        return cls(**values)  # type: ignore[arg-type]


def _read(value: object, kind: Any, what: str) -> object:
    """``value`` checked against ``kind`` (float, int, str, bool, list[...], tuple[...], Literal)."""
    if get_origin(kind) is Literal:
        return check(value, kind, what)
    base, optional = _unwrap(kind)
    if optional:
        return None if value is None else _read(value, base, what)
    if kind is float:
        if value is None:
            return float("nan")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind in (str, bool):
        if isinstance(value, kind):
            return value
    elif get_origin(kind) in (list, tuple):
        inner = get_args(kind)[0]
        if isinstance(value, list):
            try:
                items = [_read(x, inner, what) for x in value]
            except ConfigError:
                raise ConfigError(f"{what} should be list[{inner.__name__}], found {value!r}") from None
            return items if get_origin(kind) is list else tuple(items)
    elif kind is object or get_origin(kind) is dict:
        return value
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{what} should be {name}, found {value!r}")


@dataclass(frozen=True, kw_only=True)
class JudgedBy(Record):
    """Who judged a row's answers: the ``judge*`` columns (:func:`emi.behaviour.metrics.judge_columns`)."""

    judge: str | None = None
    """The judge's name (names joined by " + " when several judged)."""
    judge_model: str | None = None
    """The judge's model, for a served judge."""
    judge_server: str | None = None
    """The judge's server, for a served judge."""
    judge_prompt: str | None = None
    """The judge prompt's name or fingerprint."""
    judge_fingerprints: list[str] = field(default_factory=list)
    """The provider's system fingerprints, each once."""
    judge_mixed: bool = False
    """More than one judge or fingerprint."""

    @classmethod
    def of(cls, j: JudgeColumns | None) -> JudgedBy:
        return cls() if j is None else cls(judge=j["judge"], judge_model=j["judge_model"],
                                           judge_server=j["judge_server"], judge_prompt=j["judge_prompt"],
                                           judge_fingerprints=list(j["judge_fingerprints"]), judge_mixed=j["judge_mixed"])


@dataclass(frozen=True, kw_only=True)
class SummaryColumns(Record):
    """What a row says about its judged answers (a :class:`~emi.behaviour.metrics.Summary` without
    its label): counts, the rates, and who judged."""

    n_answers: int = 0
    """Answers counted (the headline ones: ``_json`` variants excluded)."""
    n_scored: int = 0
    """Answers the judge scored."""
    n_unscored: int = 0
    """Judgements that failed (asked again on the next run); in no denominator."""
    n_code: int = 0
    """Answers the judge called CODE; in no denominator."""
    n_refusal: int = 0
    """Answers the judge called REFUSAL; in no denominator."""
    mean_aligned: float = float("nan")
    """Mean alignment score of the scored answers."""
    mean_coherent: float = float("nan")
    """Mean coherence score of the scored answers."""
    denominator: Denominator = "coherent"
    """What ``em`` divides by."""
    em: Rate
    """Misaligned among the denominator."""
    coherence: Rate
    """Coherent among scored."""
    em_coherent: Rate | None = None
    """Misaligned among coherent answers (Betley et al.)."""
    em_scored: Rate | None = None
    """Misaligned among every scored answer (model-organisms-for-EM)."""
    judged_by: JudgedBy = field(default_factory=JudgedBy)
    """Who judged."""

    @classmethod
    def of(cls, s: Summary) -> SummaryColumns:
        return cls(n_answers=s.n_answers, n_scored=s.n_scored, n_unscored=s.n_unscored, n_code=s.n_code,
                   n_refusal=s.n_refusal, mean_aligned=s.mean_aligned, mean_coherent=s.mean_coherent,
                   denominator=s.denominator, em=s.em, coherence=s.coherence, em_coherent=s.em_coherent,
                   em_scored=s.em_scored, judged_by=JudgedBy.of(s.judge))
