"""Stage 6, directions: the Direction artifact, mean-difference extraction, contrast prompts, layer selection, SAE features."""
