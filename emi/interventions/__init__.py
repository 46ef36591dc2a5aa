"""Stage 3, interventions: steering and ablation with HF hooks (hooks.py), TransformerLens (transformerlens.py)
and nnsight (nnsight_edits.py), and weight edits (weights.py), all from one vector interface and one projection
(vector.py). Depends on emi.models and emi.core, never on emi.directions."""
