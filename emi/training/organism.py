"""Shim: the organism folder's record lives in :mod:`emi.models.organism_folder` (emi/defences.py
still imports it from here; delete this module once it does not)."""

from emi.models.organism_folder import read_organism

__all__ = ["read_organism"]
