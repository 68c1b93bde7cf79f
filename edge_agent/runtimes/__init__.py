"""On-device model runtimes: one file per backend (key, pydantic config, class), imported lazily.

Every runtime takes float32 feeds in normalised units and returns float32 outputs in normalised units;
quantisation of int8 models happens inside the runtime, so callers never see integer tensors.
"""

from edge_agent.runtimes.base import ModelRuntime, RuntimeInfo
from edge_agent.runtimes.registry import RUNTIMES, RuntimeConfig, create_runtime, load_model
from edge_agent.runtimes.selftest import run_self_test

__all__ = [
    "RUNTIMES",
    "ModelRuntime",
    "RuntimeConfig",
    "RuntimeInfo",
    "create_runtime",
    "load_model",
    "run_self_test",
]
