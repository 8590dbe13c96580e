"""Checkpoints of an online-SGD run: the engine's live state, the member draws and the records at a chunk boundary.

A checkpoint is written with :func:`easyhard._io.save_tensors` (atomic, checksummed) and only of a state within
the divergence rule (:mod:`easyhard.train.divergence`); a state outside it is not saved, since the next record
stops the run anyway. It is used only after it passes, in this order:

- the checksum of :func:`easyhard._io.load_tensors` (bit flips, truncation, foreign files);
- the run: the meta must be that of this model, data, config, seeds and engine;
- the position: ``start`` a chunk boundary inside the run (CHUNK <= start < steps), ``rec`` the number of
  record points at or before ``start``;
- the schema: exactly the tensors this engine, the draws and the records save, each with the dtype and shape of
  the live one;
- the numbers: every float of the engine state and of the filled records finite, the peak weight norm within
  the rule, losses >= 0, |overlaps| <= 1, training counts summing to ``start``, pass orders permutations of
  range(n) and the position in the pass within it.

Any failure raises :class:`easyhard._io.CorruptedFile` (a ConfigError): one line naming the file, saying to
delete it to start the run over. Nothing of a refused file is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from easyhard._io import CorruptedFile, load_tensors, save_tensors
from easyhard.train.divergence import WEIGHT_NORM_BOUND
from easyhard.train.online.draws import MemberDraws
from easyhard.train.online.engine import Engine

#: what every refusal tells the user to do
HINT = "delete it to start the run over"
#: how far a saved overlap (a cosine) may exceed 1 by round-off in float32
_COSINE_SLACK = 1e-5


def _as_tensor(x) -> torch.Tensor:
    """A numpy array (uint64 reinterpreted as int64), tensor or generator (its state) as a CPU tensor."""
    if isinstance(x, torch.Generator):
        return x.get_state()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.view(np.int64) if x.dtype == np.uint64 else x).clone()
    return x.detach().cpu().clone()


def _assign(live, saved: torch.Tensor) -> None:
    """Copy a saved tensor into a live array, tensor or generator in place (keeps addresses for CUDA graphs)."""
    if isinstance(live, torch.Generator):
        live.set_state(saved)
    elif isinstance(live, np.ndarray):
        live[...] = saved.numpy().view(live.dtype) if live.dtype == np.uint64 else saved.numpy()
    else:
        live.copy_(saved)


def _tensors(engine: Engine, draws: MemberDraws, records: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Everything a checkpoint holds, by its saved name."""
    # "runner." (the engines' former name) keeps the names of earlier versions
    tensors = {f"runner.{k}": _as_tensor(v) for k, v in engine.live_state().items()}
    tensors |= {f"records.{k}": _as_tensor(v) for k, v in records.items()}
    return tensors | draws.state()


def _number_problem(tensors: dict[str, torch.Tensor], start: int, rec: int) -> str | None:
    """Why the numbers of a checkpoint at (start, rec) are unusable, or None: see the module docstring."""
    for name, t in tensors.items():
        if name.startswith("runner.") and t.is_floating_point() and not torch.isfinite(t).all():
            return f"non-finite values in {name}"
    peak = tensors["runner.peak"]
    if not (peak <= WEIGHT_NORM_BOUND).all():
        return f"runner.peak above the divergence bound {WEIGHT_NORM_BOUND:.3g}"
    overlaps, loss = tensors["records.overlaps"][:rec], tensors["records.loss"][:rec - 1]
    if not (torch.isfinite(overlaps).all() and torch.isfinite(loss).all()):
        return "non-finite values in the records"
    if (loss < 0).any() or (overlaps.abs() > 1 + _COSINE_SLACK).any():
        return "records out of range (a loss below 0 or an overlap beyond 1)"
    if "records.counts" in tensors and (tensors["records.counts"].sum(1) != start).any():
        return f"training counts do not sum to the {start} steps done"
    return None


def _draws_problem(tensors: dict[str, torch.Tensor], n_samples: int | None) -> str | None:
    """Why the saved pass orders and position are unusable (finite-n mode), or None."""
    pos = int(tensors["draws.pos"][0])
    if pos != 0 and (n_samples is None or not 0 <= pos <= n_samples):
        return f"draws.pos {pos} outside the pass"
    for name, perm in tensors.items():
        if name.startswith("draws.perm.") and not torch.equal(perm.sort().values, torch.arange(len(perm))):
            return f"{name} is not an order of the training set"
    return None


def save_checkpoint(path: str | Path, meta: dict, engine: Engine, draws: MemberDraws, records: dict[str, np.ndarray],
                    start: int, rec: int) -> bool:
    """Write the state at chunk boundary ``start`` (next record ``rec``) atomically; returns whether it was written
    (not when the state is outside the divergence rule: the next record raises :class:`DivergenceError`)."""
    tensors = _tensors(engine, draws, records)
    if _number_problem(tensors, start, rec) is not None:
        return False
    save_tensors(path, tensors, meta | {"start": start, "rec": rec})
    return True


def _check_position(path: Path, start, rec, steps_log: np.ndarray, chunk: int) -> None:
    """``start`` a chunk boundary inside the run and ``rec`` its record index (ints)."""
    if type(start) is not int or type(rec) is not int:
        raise CorruptedFile(path, "no integer start and rec in its meta", HINT)
    steps = int(steps_log[-1])
    if not (chunk <= start < steps and start % chunk == 0):
        raise CorruptedFile(path, f"start={start} is not a chunk boundary inside the run's {steps} steps", HINT)
    expected = int(np.searchsorted(steps_log, start, side="right"))
    if rec != expected:
        raise CorruptedFile(path, f"rec={rec} does not match start={start} (expected {expected})", HINT)


def _check_schema(path: Path, tensors: dict, expected: dict[str, torch.Tensor]) -> None:
    """Exactly the expected names, each a tensor with the dtype and shape of the live one."""
    missing, extra = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing:
        raise CorruptedFile(path, f"missing tensor {missing[0]}", HINT)
    if extra:
        raise CorruptedFile(path, f"unexpected entry {extra[0]}", HINT)
    for name, like in expected.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor) or t.dtype != like.dtype or t.shape != like.shape:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise CorruptedFile(path, f"{name} is {got}, expected {like.dtype} {tuple(like.shape)}", HINT)


def restore_checkpoint(path: str | Path, meta: dict, engine: Engine, draws: MemberDraws,
                       records: dict[str, np.ndarray], steps_log: np.ndarray, chunk: int,
                       n_samples: int | None) -> tuple[int, int]:
    """Load a checkpoint into the live state of a fresh run (engine, draws, records); returns (chunk start, next
    record index). Raises :class:`CorruptedFile` naming the file, before changing any live state, unless every
    check of the module docstring passes."""
    path = Path(path)
    tensors, saved = load_tensors(path, HINT)
    start, rec = saved.pop("start", None), saved.pop("rec", None)
    if json.dumps(saved, sort_keys=True) != json.dumps(json.loads(json.dumps(meta)), sort_keys=True):
        raise CorruptedFile(path, "it belongs to a different run: model, data, config, seeds or engine differ",
                            "delete it or use another path")
    _check_position(path, start, rec, steps_log, chunk)
    expected = _tensors(engine, draws, records)
    if n_samples is not None:  # a finite-n run has drawn its first pass order by any chunk boundary
        expected |= {f"draws.perm.{e}": torch.zeros(n_samples, dtype=torch.int64) for e in range(len(draws.gens))}
    _check_schema(path, tensors, expected)
    problem = _number_problem(tensors, start, rec) or _draws_problem(tensors, n_samples)
    if problem is not None:
        raise CorruptedFile(path, problem, HINT)
    for k, v in engine.live_state().items():
        _assign(v, tensors[f"runner.{k}"])
    for k, v in records.items():
        _assign(v, tensors[f"records.{k}"])
    draws.load_state(tensors)
    return start, rec
