"""Training engines: online SGD of simple denoisers on a leading ensemble axis (mcm_theory.md section 8)."""

from easyhard.train.online import (
    CHUNK,
    ENGINES,
    WEIGHTINGS,
    DivergenceError,
    OnlineSGDConfig,
    OnlineSGDResult,
    log_steps,
    run_online_sgd,
)

__all__ = [
    "CHUNK",
    "ENGINES",
    "WEIGHTINGS",
    "DivergenceError",
    "OnlineSGDConfig",
    "OnlineSGDResult",
    "log_steps",
    "run_online_sgd",
]
