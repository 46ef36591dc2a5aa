"""placeholder"""
from __future__ import annotations
import argparse
from typing import Any


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("crosscoder")
    g.add_argument("--store", default=None, help="crosscoder: an emi activation store of both models (emi.cache)")


def check_store(name: str, spec: Any, layer: Any) -> Any:
    raise NotImplementedError


def run_crosscoder(args: Any, pair: Any, layer: int, ids: Any, store: Any, out: Any) -> list:
    raise NotImplementedError
