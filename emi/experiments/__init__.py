"""Stage 7, experiments: the steer conditions (conditions.py), the pair's persona direction (persona.py), the results
table (results.py), training dynamics, EM with SAE latents zeroed."""
