"""Plugins register pairs, question sets, judges and option pairs (the embedded organism is
one). A plugin is a module named by an ``emi.plugins`` entry point (see pyproject.toml) or in the
``EMI_PLUGINS`` environment variable (comma-separated module names); importing it registers what
it brings. Loaded once, on the first lookup of any registry.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from emi.core.errors import ConfigError

_loaded = False


def load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    names = [ep.value for ep in entry_points(group="emi.plugins")]
    names += [n.strip() for n in os.environ.get("EMI_PLUGINS", "").split(",") if n.strip()]
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"the emi plugin {name!r} cannot be imported ({exc}); install it, or remove it from "
                              f"EMI_PLUGINS") from None
