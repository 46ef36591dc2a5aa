"""The in-process backend: the model in emi's own process, with every hook applied to it
(emi.behaviour.sampling.InProcess, the reference every other backend is tested against). It is
what runs when ``--engine in-process`` (no :class:`emi.engines.base.Backend`) is chosen, and what
runs a condition another backend does not serve."""

from __future__ import annotations

from emi.behaviour.sampling import InProcess

NAME = "in-process"  # what results and answer lines record for it
LABEL = "in-process"  # how a command names it

__all__ = ["InProcess", "NAME", "LABEL"]
