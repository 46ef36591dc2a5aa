"""Shim: evaluate lives in :mod:`emi.judging.evaluation` (emi/diffing and the notebooks still import it
from here; delete this module once they do not)."""

from emi.judging.evaluation import evaluate

__all__ = ["evaluate"]
