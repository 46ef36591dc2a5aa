"""Stage 3, activations: readers (HF, TransformerLens, nnsight), the capture plan (texts, positions, CaptureSpec,
shards), capture (serial and data-parallel) into the on-disk store, and a pair's store verified and merged."""
