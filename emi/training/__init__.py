"""Stage 8, training: making organisms: finetuning, in-training defences, data screening, defence tables."""
