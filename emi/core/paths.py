"""Where emi's shipped data lives (questions, option pairs, the benign set)."""

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
