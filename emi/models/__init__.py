"""Stage 2, models: load a pair (hub id, folder, LoRA adapter), the pair kit, the registry, an organism folder as a pair,
rendering and encoding prompts (chat.py), and where each architecture's layers are."""
