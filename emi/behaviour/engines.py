"""Moved to emi.engines (served, base, server, vllm.engine, vllm.lens); kept for merging."""

from emi.engines.base import Bound, EngineError, bind, prepare
from emi.engines.served import Ablation, Program, Served, Steering, local, pair_adapters, plain
from emi.engines.server import ServerEngine, parse_body
from emi.engines.vllm.engine import VllmEngine, adapter_name
from emi.engines.vllm.lens import (
                                   ablation_hook,
                                   complete_ids,
                                   lens_xargs,
                                   steering_hook,
                                   steering_xarg,
                                   wire_tensor,
)

__all__ = ["Ablation", "Bound", "EngineError", "Program", "Served", "ServerEngine", "Steering", "VllmEngine",
           "ablation_hook", "adapter_name", "bind", "complete_ids", "lens_xargs", "local", "pair_adapters",
           "parse_body", "plain", "prepare", "steering_hook", "steering_xarg", "wire_tensor"]
