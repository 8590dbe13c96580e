"""Offline mode: the monitor's measurements over a folder of saved checkpoints, in step order (docs/monitor.md,
"Offline").

Each checkpoint (:func:`~easyhard.monitor.checkpoints.find_checkpoints`: diffusers ``save_pretrained`` folders,
safetensors files or state dicts read with ``weights_only=True``) is loaded into one model object, which the
diffusers adapter wraps (:func:`~easyhard.monitor.adapters.diffusers`, with the scheduler saved next to the
checkpoints or diffusers' default DDPMScheduler), and measured by one :class:`~easyhard.monitor.Monitor`: the same
records, report and figure as online. A twin's checkpoints are matched by step. An output folder with records
continues after its last step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from easyhard._validate import ConfigError
from easyhard.monitor.adapters import diffusers
from easyhard.monitor.checkpoints import find_checkpoints, load_checkpoint, load_scheduler
from easyhard.monitor.core import Monitor, MonitorConfig


def _scheduler(folder: Path):
    """The scheduler saved with the checkpoints, else diffusers' default DDPMScheduler (linear, 1000 steps,
    epsilon)."""
    found = load_scheduler(folder)
    if found is not None:
        return found
    from diffusers import DDPMScheduler

    return DDPMScheduler()


def monitor_checkpoints(checkpoints: str | Path, train: Tensor, test: Tensor, out_dir: str | Path, *,
                        twin_checkpoints: str | Path | None = None, twin_train: Tensor | None = None,
                        model: nn.Module | None = None, config: MonitorConfig | None = None,
                        progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Measure every checkpoint of ``checkpoints`` (and the twin's of the same step) with one Monitor writing to
    ``out_dir``; ``model``: the architecture for state-dict checkpoints (else from the folder's config.json).
    ``progress(record)`` after each update. Returns the monitor's records."""
    folder = Path(checkpoints)
    found = find_checkpoints(folder)
    scheduler = _scheduler(folder)
    net = load_checkpoint(found[0], model)
    twin_net, twin_by_step = None, {}
    if (twin_checkpoints is None) != (twin_train is None):
        raise ConfigError("twin_checkpoints and twin_train must be given together")
    if twin_checkpoints is not None:
        twin_found = find_checkpoints(twin_checkpoints)
        twin_by_step = {c.step: c for c in twin_found}
        missing = [c.step for c in found if c.step not in twin_by_step]
        if missing:
            raise ConfigError(f"twin_checkpoints has no checkpoint at steps {missing[:5]} of {folder}")
        twin_net = load_checkpoint(twin_found[0], model)
    monitor = Monitor(diffusers(net, scheduler), train, test, out_dir,
                      twin=None if twin_net is None else diffusers(twin_net, scheduler), twin_train=twin_train,
                      config=config, device=train.device)
    for checkpoint in found:
        if monitor.last_step is not None and checkpoint.step <= monitor.last_step:
            continue
        load_checkpoint(checkpoint, net)  # in place: strict keys and shapes
        if twin_net is not None:
            load_checkpoint(twin_by_step[checkpoint.step], twin_net)
        record = monitor.update(checkpoint.step)
        if progress is not None:
            progress(record)
    monitor.close()
    return monitor.records
