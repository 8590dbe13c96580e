"""The engine protocol is the whole contract: a toy engine registered here runs through the driver."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data import MixedCumulantModel
from easyhard.models import Committee
from easyhard.train import OnlineSGDConfig, run_online_sgd
from easyhard.train.online import REGISTRY, EngineSetup
from easyhard.train.online.numba_engine import NumbaEngine

D = 16


class _Crash(Exception):
    pass


class _Toy:
    """The numba engine behind the protocol, with one more piece of state (the number of steps it ran) and a
    crash on request (before the global step ``crash_at``)."""

    crash_at: int | None = None

    def __init__(self, setup: EngineSetup):
        self.inner = NumbaEngine(setup)
        self.steps = np.zeros(1, np.int64)

    @staticmethod
    def unsupported(model, config):
        return "it refuses K > 1" if model.K > 1 else None

    def load_chunk(self, chunk):
        self.inner.load_chunk(chunk)

    def run(self, i0, i1, step0):
        if self.crash_at is not None and step0 + i1 >= self.crash_at:
            raise _Crash
        self.inner.run(i0, i1, step0)
        self.steps += i1 - i0

    def take_loss(self):
        return self.inner.take_loss()

    def overlaps(self):
        return self.inner.overlaps()

    def peak_norm(self):
        return self.inner.peak_norm()

    def recovery(self):
        return self.inner.recovery()

    def live_state(self):
        return {**self.inner.live_state(), "steps": self.steps}

    def params(self):
        return {**self.inner.params(), "steps": torch.from_numpy(self.steps.copy())}


def test_engine_names_and_devices_come_from_the_registry(monkeypatch):
    with pytest.raises(ConfigError, match="engine"):
        OnlineSGDConfig(engine="toy")
    monkeypatch.setitem(REGISTRY, "toy", {"cuda": _Toy})
    data = MixedCumulantModel.create(d=D)
    with pytest.raises(ConfigError, match="engine 'toy' unavailable: it runs on cuda only"):
        run_online_sgd(Committee(d=D), data, OnlineSGDConfig(steps=5, engine="toy"), [1])
    monkeypatch.setitem(REGISTRY, "toy", {"cpu": _Toy})
    with pytest.raises(ConfigError, match="engine 'toy' unavailable: it refuses K > 1"):
        run_online_sgd(Committee(d=D, K=2), data, OnlineSGDConfig(steps=5, engine="toy"), [1])


def test_toy_engine_runs_and_resumes_through_the_driver(monkeypatch, tmp_path):
    """Records, recovery tracks and checkpoint/resume of the driver work for any engine of the protocol: the toy's
    run is the numba engine's bit for bit, and its extra state survives a crash and the checkpoint."""
    monkeypatch.setitem(REGISTRY, "toy", {"cpu": _Toy})
    data = MixedCumulantModel.create(d=D, beta_u=5.0, beta_v=5.0, beta_m=0.5, coupling="sign")
    net, seeds, steps = Committee(d=D, second_layer="untied"), [3, 4], 3000
    cfg = OnlineSGDConfig(steps=steps, dtype="float64", n_logs=12, engine="toy")
    ref = run_online_sgd(net, data, OnlineSGDConfig(**{**cfg.to_dict(), "engine": "numba"}), seeds)
    whole = run_online_sgd(net, data, cfg, seeds)
    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(_Toy, "crash_at", 2500)  # after the checkpoint at the chunk boundary 2048
    with pytest.raises(_Crash):
        run_online_sgd(net, data, cfg, seeds, checkpoint=ckpt, checkpoint_every=0)
    assert ckpt.exists()
    monkeypatch.setattr(_Toy, "crash_at", None)
    resumed = run_online_sgd(net, data, cfg, seeds, checkpoint=ckpt)
    for res in (whole, resumed):
        assert res.engine == "toy" and int(res.params["steps"][0]) == steps
        np.testing.assert_array_equal(res.overlaps, ref.overlaps)
        np.testing.assert_array_equal(res.loss, ref.loss)
        np.testing.assert_array_equal(res.first_hit, ref.first_hit)
        np.testing.assert_array_equal(res.recovered, ref.recovered)
        for k in ref.params:
            assert torch.equal(res.params[k], ref.params[k])
