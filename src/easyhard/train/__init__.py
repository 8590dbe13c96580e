"""Training engines: online SGD of simple denoisers on a leading ensemble axis (docs/theory/mcm.md section 8), and
diffusion training of networks on finite datasets with exact resume (docs/theory/images.md section 1)."""

from easyhard.train.diffusion import DiffusionTrainConfig, TrainResult, load_snapshot, train_diffusion
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
    "DiffusionTrainConfig",
    "DivergenceError",
    "OnlineSGDConfig",
    "OnlineSGDResult",
    "TrainResult",
    "load_snapshot",
    "log_steps",
    "run_online_sgd",
    "train_diffusion",
]
