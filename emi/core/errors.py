"""emi's errors: one base class, each message says what was expected, what was found, what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EmiError(Exception):
    """Base class of every error emi raises on purpose (CLIs print these without a traceback)."""


class ModelLoadError(EmiError):
    """A checkpoint, adapter or pair could not be loaded or does not fit."""


class ConfigError(EmiError, ValueError):
    """A setting or argument is out of range or malformed."""


class StoreError(EmiError):
    """An activation store is missing, corrupted, or does not match the request."""


class JudgeError(EmiError):
    """A judge could not be reached or configured."""


class DirectionError(EmiError):
    """A direction artifact is malformed or does not fit the model."""


def read_yaml(path: str | Path, what: str) -> Any:
    """A user's YAML file (``what``: e.g. "question file"), or a ConfigError saying it is missing
    or malformed; validating its contents is the caller's."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from None
