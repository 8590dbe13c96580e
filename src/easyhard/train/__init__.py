"""Training: online SGD of simple denoisers on a leading ensemble axis (docs/theory/mcm.md section 8), and one
loop for networks and ensembles of networks on finite datasets with exact resume (docs/theory/images.md
section 1, docs/theory/generalization.md section 4)."""

from easyhard.train.diffusion import DiffusionTrainConfig, train_diffusion
from easyhard.train.divergence import DivergenceError
from easyhard.train.ensemble import EnsembleTrainConfig, Splits, train_ensemble
from easyhard.train.finite import (
    STATE_FILE,
    LoopConfig,
    TrainResult,
    checkpoint_grid,
    denoising_loss,
    load_snapshot,
    read_state,
    sequence_loss,
    train_loop,
)
from easyhard.train.online import (
    CHUNK,
    ENGINES,
    WEIGHTINGS,
    OnlineSGDConfig,
    OnlineSGDResult,
    log_steps,
    run_online_sgd,
)

__all__ = [
    "sequence_loss",
    "CHUNK",
    "ENGINES",
    "STATE_FILE",
    "WEIGHTINGS",
    "DiffusionTrainConfig",
    "DivergenceError",
    "EnsembleTrainConfig",
    "LoopConfig",
    "OnlineSGDConfig",
    "OnlineSGDResult",
    "Splits",
    "TrainResult",
    "checkpoint_grid",
    "denoising_loss",
    "load_snapshot",
    "log_steps",
    "read_state",
    "run_online_sgd",
    "train_diffusion",
    "train_ensemble",
    "train_loop",
]
