"""emi: a mechanistic-interpretability workbench for emergent misalignment.

The flow (each arrow an artifact on disk): models -> generate -> judge -> metrics;
capture -> store -> directions -> hooks (steer / ablate / orthogonalise) -> experiments -> figures.
Commands: python -m emi.{evaluate,cache,extract,steer,sae,figures}, python -m emi.organism.train.

Layer convention: layer l is the residual stream after decoder block l (see emi.models.layers).
"""

__version__ = "0.1.0"
