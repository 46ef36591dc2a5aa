"""Moved to emi.engines.vllm.launcher; kept for merging."""

from emi.engines.base import EngineError
from emi.engines.vllm.launcher import (
                                       ARCHITECTURES,
                                       CPU_HEAD_SIZES,
                                       DEFAULT_PYTHON,
                                       ROOT,
                                       EngineInfo,
                                       Launcher,
                                       Server,
                                       check_port,
                                       check_servable,
                                       free_port,
                                       lora_rank,
                                       probe,
                                       vllm_dtype,
                                       vllm_python,
)

__all__ = ["ARCHITECTURES", "CPU_HEAD_SIZES", "DEFAULT_PYTHON", "ROOT", "EngineError", "EngineInfo", "Launcher",
           "Server", "check_port", "check_servable", "free_port", "lora_rank", "probe", "vllm_dtype", "vllm_python"]
