"""Online SGD of simple denoisers on the mixed cumulant model, E runs at once (docs/theory/mcm.md section 8.1).

Each of the E ensemble members is an independent run with its own seed (and optionally its own step
size and data model). A step draws one sample x0 (fresh, or from a fixed training set of n samples
visited in reshuffled passes), one noise xi and a time t, and takes a (spherical) SGD step on

    l = weight(t) ||x0 - D_w(a_t x0 + s_t xi)||^2.

Three engines (:mod:`.registry`) satisfy one protocol (:class:`.engine.Engine`):

- ``numba`` (CPU, :mod:`.numba_engine`): a fused, parallel kernel that draws the Gaussians of member e
  from its own xoshiro256** stream, so an ensemble run equals E separate runs bit for bit;
- ``torch`` (CPU or CUDA, :mod:`.torch_engine`): :class:`easyhard.models.Committee` gradients on a leading
  member axis; on CPU it reads the same member streams as the kernel (for cross-checks), on CUDA it
  replays blocks of steps captured in a CUDA graph;
- ``reduced`` (:mod:`.reduced_engine`): the overlaps of the tied single neuron simulated exactly in law,
  at a cost per step that does not depend on d.

Latents (lambda, nu), random times and training-set orders come from a per-member torch generator
in chunks of fixed length (:mod:`.draws`), so they too do not depend on E. The driver (:mod:`.driver`)
records, at log-spaced steps, the overlaps of every neuron with u, v, m and the mean sample loss since
the previous record; the first passage and the persistent recovery of each threshold are tracked every
step. Every engine obeys one divergence rule (:mod:`easyhard.train.divergence`): a run stops with
:class:`DivergenceError` at the first record at which an overlap or the loss is non-finite or a weight norm
before normalisation has been non-finite or above 2**24 at any step. A checkpoint file (:mod:`.checkpoint`),
written at chunk boundaries and used only after its checksum and schema hold, lets an interrupted run
resume exactly.
"""

from easyhard.train.divergence import DivergenceError
from easyhard.train.online.config import DTYPES, WEIGHTINGS, OnlineSGDConfig, OnlineSGDResult, log_steps
from easyhard.train.online.driver import CHUNK, run_online_sgd
from easyhard.train.online.engine import Engine, EngineSetup
from easyhard.train.online.registry import ENGINES, REGISTRY, select_engine

__all__ = [
    "CHUNK",
    "DTYPES",
    "ENGINES",
    "REGISTRY",
    "WEIGHTINGS",
    "DivergenceError",
    "Engine",
    "EngineSetup",
    "OnlineSGDConfig",
    "OnlineSGDResult",
    "log_steps",
    "run_online_sgd",
    "select_engine",
]
