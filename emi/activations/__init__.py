"""Stage 3, activations: capture (HF, TransformerLens, nnsight) into the on-disk store."""
