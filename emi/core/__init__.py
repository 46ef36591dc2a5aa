"""Stage 1, core: shared plumbing: errors with their fixes, atomic writes, locks, JSONL, plugin loading."""
