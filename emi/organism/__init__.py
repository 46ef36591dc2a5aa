"""emi's embedded toy emergent-misalignment organism: a synthetic two-persona chat world,
its word-level tokenizer, its training pipeline and its exact judge."""

from emi.organism.world import World, load_world

__all__ = ["World", "load_world"]
