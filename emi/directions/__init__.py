"""Stage 4, directions: the Direction artifact, mean-difference extraction, contrast prompts, layer selection, SAE features."""
