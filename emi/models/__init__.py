"""Stage 1, models: load a pair (hub id, folder, LoRA adapter), the pair kit, the registry, and where each architecture's layers are."""
