"""Online-SGD engines by name and device type; a new engine is one module and one line of :data:`REGISTRY`."""

from __future__ import annotations

import torch

from easyhard._validate import ConfigError
from easyhard.models import Committee
from easyhard.train.online.config import OnlineSGDConfig
from easyhard.train.online.engine import Engine
from easyhard.train.online.numba_engine import NumbaEngine
from easyhard.train.online.reduced_engine import ReducedEngine, TorchReducedEngine
from easyhard.train.online.torch_engine import TorchEngine

#: engine name -> {device type: implementation}; a setting it does not support names its reason (``unsupported``)
REGISTRY: dict[str, dict[str, type[Engine]]] = {
    "numba": {"cpu": NumbaEngine},
    "torch": {"cpu": TorchEngine, "cuda": TorchEngine},
    "reduced": {"cpu": ReducedEngine, "cuda": TorchReducedEngine},
}
#: what ``engine="auto"`` tries, in order: the first that supports the setting runs it
AUTO = ("numba", "torch")


def engine_names() -> tuple[str, ...]:
    """The values of ``OnlineSGDConfig.engine``: "auto" and the registered names."""
    return ("auto", *REGISTRY)


#: the engine names at import (``engine_names()`` also sees engines registered later)
ENGINES = engine_names()


def _unsupported(name: str, model: Committee, config: OnlineSGDConfig) -> str | None:
    devices = REGISTRY[name]
    engine = devices.get(torch.device(config.device).type)
    if engine is None:
        return f"it runs on {' or '.join(devices)} only"
    return engine.unsupported(model, config)


def select_engine(model: Committee, config: OnlineSGDConfig) -> tuple[str, type[Engine]]:
    """The engine that runs ``config``: its name and implementation for ``config.device``.

    ``engine="auto"`` takes the first of :data:`AUTO` that supports the setting; a named engine that does not
    support it raises ConfigError with the reason.
    """
    name = config.engine
    if name == "auto":
        name = next(n for n in AUTO if _unsupported(n, model, config) is None)
    reason = _unsupported(name, model, config)
    if reason is not None:
        raise ConfigError(f"engine {name!r} unavailable: {reason}")
    return name, REGISTRY[name][torch.device(config.device).type]
