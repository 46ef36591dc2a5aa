"""Making organisms: finetuning, in-training defences, data screening, defence tables."""
