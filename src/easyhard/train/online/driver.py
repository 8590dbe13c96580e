"""The online-SGD driver: chunks of per-member draws, record points, divergence check and checkpoints.

:func:`run_online_sgd` builds the initial state of E runs (:class:`.MemberDraws`), hands it to the engine
chosen by :func:`.registry.select_engine`, and advances the engine chunk by chunk (CHUNK steps, so the
per-member draws do not depend on E), stopping at the log-spaced record points of :func:`.log_steps` to
read the overlaps and the mean loss and apply the divergence rule (:mod:`easyhard.train.divergence`). A
checkpoint file (:mod:`.checkpoint`), written at chunk boundaries, holds the engine's live state, the draws and
the records, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from easyhard._validate import ConfigError
from easyhard.data.mcm import MixedCumulantModel
from easyhard.models import Committee
from easyhard.train.divergence import check_members
from easyhard.train.online.checkpoint import restore_checkpoint, save_checkpoint
from easyhard.train.online.config import OnlineSGDConfig, OnlineSGDResult, log_steps
from easyhard.train.online.draws import MemberDraws
from easyhard.train.online.engine import EngineSetup
from easyhard.train.online.registry import select_engine

#: steps per chunk of latents / times / orders drawn from the member generators (fixed: keeps streams E-independent)
CHUNK = 2048


def run_online_sgd(model: Committee, data: MixedCumulantModel | Sequence[MixedCumulantModel],
                   config: OnlineSGDConfig, seeds: Sequence[int],
                   progress: Callable[[int], None] | None = None, checkpoint: str | Path | None = None,
                   checkpoint_every: float = 60.0) -> OnlineSGDResult:
    """Run ``len(seeds)`` independent online-SGD runs of ``model`` on ``data`` (docs/theory/mcm.md section 8.1).

    ``progress(k)`` is called with the number of steps just completed (for a progress bar).
    Raises :class:`DivergenceError` at the first record point at which a member is outside the divergence rule of
    :mod:`easyhard.train.divergence` (non-finite overlaps or loss, or a weight norm before normalisation that is
    non-finite or above its bound at any step so far); a run that returns satisfied the rule at every step.

    ``checkpoint``: a file that holds the whole state (weights, random streams, generators, records) at
    a chunk boundary, written atomically at most every ``checkpoint_every`` seconds. If it exists when
    the call starts, the run resumes from it and ends with the numbers of an uninterrupted run; it must
    come from the same model, data, config and seeds and pass the checks of :mod:`.checkpoint` (else
    :class:`easyhard._io.CorruptedFile`, a ConfigError naming the file). It is deleted at the end.
    """
    models = _check_inputs(model, data, seeds)
    name, engine_cls = select_engine(model, config)
    E = len(seeds)
    draws = MemberDraws(seeds)
    setup = _setup(model, models, config, seeds, draws)
    engine = engine_cls(setup)
    steps_log = log_steps(config.steps, config.n_logs)
    overlaps = np.full((len(steps_log), E, model.K, 3), np.nan)  # NaN until recorded
    loss = np.full((len(steps_log) - 1, E), np.nan)
    overlaps[0] = engine.overlaps()
    counts = np.zeros((E, config.n_samples), np.int64) if config.n_samples is not None else None
    rec, first = 1, 0
    meta = {"version": 2, "model": model.to_dict(), "data": [m.to_dict() for m in models], "config": config.to_dict(),
            "seeds": [int(s) for s in seeds], "engine": name}
    records = {"overlaps": overlaps, "loss": loss, **({"counts": counts} if counts is not None else {})}
    if checkpoint is not None and Path(checkpoint).exists():
        first, rec = restore_checkpoint(checkpoint, meta, engine, draws, records, steps_log, CHUNK, config.n_samples)
    saved_at = time.monotonic()
    for start in range(first, config.steps, CHUNK):
        if checkpoint is not None and start > first and time.monotonic() - saved_at >= checkpoint_every:
            save_checkpoint(checkpoint, meta, engine, draws, records, start, rec)
            saved_at = time.monotonic()
        length = min(CHUNK, config.steps - start)
        chunk = draws.chunk(models, length, config, model.skip_coefficient)
        if counts is not None:
            np.add.at(counts, (np.arange(E)[:, None], chunk["idx"]), 1)
        engine.load_chunk(chunk)
        i = 0
        while i < length:
            stop = min(length, int(steps_log[rec]) - start)
            engine.run(i, stop, start)
            if progress is not None:
                progress(stop - i)
            i = stop
            if start + i == steps_log[rec]:
                loss[rec - 1] = engine.take_loss() / (steps_log[rec] - steps_log[rec - 1])
                overlaps[rec] = engine.overlaps()
                check_members(overlaps[rec], loss[rec - 1], engine.peak_norm(), int(steps_log[rec]))
                rec += 1
    first_hit, recovered = engine.recovery()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return OnlineSGDResult(steps_log, overlaps, loss, first_hit, recovered, tuple(config.thresholds),
                           setup.etas, tuple(int(s) for s in seeds), name, engine.params(), counts)


def _setup(model: Committee, models: Sequence[MixedCumulantModel], config: OnlineSGDConfig, seeds: Sequence[int],
           draws: MemberDraws) -> EngineSetup:
    """The initial state of the E runs: weights and training sets from the member generators, spikes and
    sampler coefficients (E,3,d), (E,4) of the data models, member streams, step sizes and thresholds."""
    from easyhard.train._rng import seed_states

    params = draws.initial_params(model)
    X = draws.training_sets(models, config.n_samples) if config.n_samples is not None else None
    P = np.stack([m.spike_vectors(torch.float64).numpy() for m in models])
    coef = np.array([[math.sqrt(m.beta_u), math.sqrt(m.beta_v), m.whitening_shrink, m.beta_m] for m in models])
    return EngineSetup(model, config, params, X, P, coef, seed_states([int(s) for s in seeds]),
                       config.etas(model.d, len(seeds)), np.asarray(config.thresholds, dtype=np.float64))


def _check_inputs(model: Committee, data, seeds) -> list[MixedCumulantModel]:
    E = len(seeds)
    if E < 1:
        raise ConfigError("seeds must hold at least one seed (one per ensemble member)")
    if len(set(int(s) for s in seeds)) != E:
        raise ConfigError("seeds must be distinct (one independent run per member)")
    models = [data] * E if isinstance(data, MixedCumulantModel) else list(data)
    if len(models) != E:
        raise ConfigError(f"data must be one model or one per member ({E}), got {len(models)}")
    for m in models:
        if m.d != model.d:
            raise ConfigError(f"data dimension d={m.d} does not match the model's d={model.d}")
    return models
