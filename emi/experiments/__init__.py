"""Stage 5-6, experiments: the steer conditions, training dynamics."""
