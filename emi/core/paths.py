"""Where emi's shipped data lives (questions, option pairs, the benign set), and the one table of
dtype names (stores record these; model flags also take bf16, fp16, fp32)."""

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

DATA = Path(__file__).resolve().parents[1] / "data"
