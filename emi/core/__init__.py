"""Shared plumbing: errors with their fixes, atomic writes, locks, JSONL, plugin loading."""
