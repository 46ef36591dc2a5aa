"""Shim: the judges live in :mod:`emi.judging.judges` (emi/diffing, the notebooks and the browser test
still import them from here; delete this module once they do not)."""

from emi.judging.judges import Judge, cache_key, judge_records, make_judge

__all__ = ["Judge", "cache_key", "judge_records", "make_judge"]
