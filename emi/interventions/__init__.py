"""Stage 5, interventions: steering and ablation hooks (HF, TransformerLens, nnsight) and weight edits, all from one projection."""
