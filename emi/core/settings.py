"""What differs between the settings an unfinished run was started with and a new command's."""

from __future__ import annotations

from collections.abc import Mapping


def differences(old: Mapping[str, object], new: Mapping[str, object], limit: int = 4) -> str:
    """``lr 0.0001 -> 0.001, steps 100 -> 50`` (nested keys dotted; at most ``limit`` named)."""
    flat_old, flat_new = _flat(old), _flat(new)
    keys = [k for k in dict.fromkeys([*flat_old, *flat_new]) if flat_old.get(k) != flat_new.get(k)]
    parts = [f"{k} {_show(flat_old.get(k))} -> {_show(flat_new.get(k))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"{len(keys) - limit} more")
    return ", ".join(parts) or "nothing"


def _flat(d: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def _show(v: object) -> str:
    text = "unset" if v is None else str(v)
    return text if len(text) <= 40 else text[:37] + "..."
