"""What differs between the settings an unfinished run was started with and a new command's."""

from __future__ import annotations

from typing import Any


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """``lr 0.0001 -> 0.001, steps 100 -> 50`` (nested keys dotted; at most ``limit`` named)."""
    flat_old, flat_new = _flat(old), _flat(new)
    keys = [k for k in dict.fromkeys([*flat_old, *flat_new]) if flat_old.get(k) != flat_new.get(k)]
    parts = [f"{k} {_show(flat_old.get(k))} -> {_show(flat_new.get(k))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"{len(keys) - limit} more")
    return ", ".join(parts) or "nothing"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _show(v: Any) -> str:
    text = "unset" if v is None else str(v)
    return text if len(text) <= 40 else text[:37] + "..."
