"""The scaling experiment: recovery cells, caching of finished cells, fits and acceptance logic."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from easyhard._validate import ConfigError
from easyhard.experiments import scaling
from easyhard.experiments.registry import RunContext, get_experiment, make_config, run_cells_inline
from easyhard.experiments.scaling import CANONICAL, S1, Part, RecoveryConfig, ScalingConfig, run_recovery, run_scaling
from easyhard.theory import NeuronSettings
from easyhard.metrics import km_median


def test_recovery_cell_reports_its_own_runs():
    cell = RecoveryConfig(**S1, d=32, seeds=24, budget=0.15)  # reduced simulator, 7x the predicted median
    m = run_recovery(cell)
    times = np.asarray(m["times"])
    assert m["steps"] == cell.steps and len(times) == 24
    assert ((times == -1) | ((times > 0) & (times <= cell.steps))).all()
    assert m["median"] == km_median(times)
    assert m["recovered_fraction"] == (times >= 0).mean() > 0.5
    assert m["q25"] <= m["median"] <= m["q75"]
    assert len(m["abs_alpha_v_q50"]) == len(m["log_steps"])
    assert m["final_abs_alpha_v"] > 0.9  # recovered runs align with v (docs/theory/calibration.md: |alpha| -> 0.99)


@pytest.mark.parametrize("kw,match", [
    ({"direction": "w"}, "direction"), ({"d": 4}, "d must"), ({"budget": 0}, "budget"),
    ({"engine": "jax"}, "engine"), ({"a_out": 0.0}, "a_out"), ({"seeds": 1}, "seeds"),
])
def test_recovery_config_errors_name_the_field(kw, match):
    with pytest.raises(ConfigError, match=match):
        make_config(get_experiment("recovery"), kw)  # a_out: a field of the neuron settings, by its own name


def _tiny() -> ScalingConfig:
    u = RecoveryConfig(**CANONICAL | {"neuron": NeuronSettings(t=0.5)}, direction="u", delta=0.5, p=1.0, budget=30.0, budget_power=1.0,
                       seeds=12, engine="auto")
    v = RecoveryConfig(**S1, seeds=24, budget=0.15)
    parts = (Part("u", u, (24, 48), 1.0, True), Part("v_indep", v, (24, 32), 3.0, False, sde=True))
    canonical = RecoveryConfig(**CANONICAL, direction="u", delta=0.5, p=1.0, budget=2.0, budget_power=2.0, seeds=8,
                               engine="auto")
    phase = RecoveryConfig(**S1, d=24, budget=1.0, budget_power=2.8, seeds=8)
    return ScalingConfig(parts, canonical, (24,), phase, (1.0, 0.1), n_boot=50)


def test_run_scaling_reuses_finished_cells(tmp_path, monkeypatch):
    config = _tiny()
    ctx = RunContext(out_dir=tmp_path)
    first = run_scaling(config, ctx)
    assert len(list((tmp_path / "cells").glob("*.json"))) == len(config.all_cells())
    calls = []
    real = scaling.run_online_sgd
    monkeypatch.setattr(scaling, "run_online_sgd", lambda *args: calls.append(args[3]) or real(*args))
    again = run_scaling(config, ctx)
    assert calls == []  # every cell came from the cache
    assert json.dumps(again["parts"]) == json.dumps(first["parts"])
    changed = replace(config, canonical=replace(config.canonical, seeds=9))
    run_scaling(changed, ctx)
    assert [len(seeds) for seeds in calls] == [9]  # only the cell whose config changed ran again
    fit = first["parts"]["v_indep"]
    assert len(fit["sde_median"]) == 2 and all(r > 0 for r in fit["median_over_sde"])
    assert set(first["acceptance"]) >= {"kappa_u", "kappa_v_indep", "canonical_u_learned_v_not", "all_pass"}


def test_acceptance_reads_the_fits():
    def part(kappa, lo, hi):
        return {"fit": {"kappa": kappa, "interval": [lo, hi], "dims": [32, 64], "medians": [1.0, 2.0]}}

    parts = {"u": part(1.2, 1.1, 1.3), "v_sign": part(1.5, 1.4, 1.6), "v_indep": part(2.9, 2.8, 3.0),
             "v_indep_reduced": part(2.9, 2.8, 3.0)}
    parts["v_indep_reduced"]["fit"]["medians"] = [1.0, 2.5]
    checks = scaling.acceptance(parts, {"u_learned_v_not": True})
    assert checks["kappa_u"]["pass"] and not checks["kappa_v_sign"]["pass"]
    assert checks["full_vs_reduced_medians"]["ratios"] == [1.0, 0.8] and not checks["full_vs_reduced_medians"]["pass"]
    assert not checks["all_pass"]


@pytest.mark.parametrize("name", ["quick", "full"])
def test_profiles_cover_the_issue_settings(name):
    config = scaling.profile(name)
    parts = {p.name: p for p in config.parts}
    indep = parts["v_indep_reduced" if name == "full" else "v_indep"]
    assert indep.cell.engine == "reduced" and indep.dims[0] == 32 and indep.dims[-1] >= (1024 if name == "full" else 256)
    assert indep.cell.delta == pytest.approx(12.53, rel=2e-3) and indep.cell.p == 2.0  # calibrated, zeta = 0.3
    assert parts["v_sign"].cell.mcm.coupling == "sign" and parts["u"].cell.direction == "u"
    if name == "full":
        assert parts["v_indep"].dims == (64, 128, 256, 512) and parts["v_indep"].cell.engine != "reduced"
        assert parts["v_indep"].cell.seeds == 256
    assert config.canonical.steps == 100 * config.canonical.d**2  # 100 d^2 steps
    assert len(config.all_cells()) == len({label for label, _ in config.all_cells()})  # cache keys are unique


def test_interrupted_cell_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A cell killed mid-way leaves a checkpoint; the rerun resumes from it and gives the uninterrupted numbers."""
    cell = RecoveryConfig(**S1, d=32, seeds=6, budget=0.15)
    whole = run_recovery(cell)

    class Kill(Exception):
        pass

    real = scaling.run_online_sgd

    def interrupted(*args, **kw):
        kw["checkpoint_every"] = 0

        def progress(k, done=[0]):  # noqa: B006 (a counter shared by the calls of one run)
            done[0] += k
            if done[0] > 3000:
                raise Kill

        return real(*args[:4], progress, args[5], **kw)

    monkeypatch.setattr(scaling, "run_online_sgd", interrupted)
    with pytest.raises(Kill):
        run_cells_inline("recovery", [("cell", cell)], tmp_path)
    assert len(list(tmp_path.glob("cell-*.ckpt"))) == 1
    monkeypatch.setattr(scaling, "run_online_sgd", real)
    resumed = run_cells_inline("recovery", [("cell", cell)], tmp_path)["cell"]
    assert resumed == whole and not list(tmp_path.glob("*.ckpt"))


@pytest.mark.parametrize("damage", [b"", b"garbage, not a checkpoint", None])
def test_a_cell_with_an_unusable_checkpoint_is_recomputed(tmp_path, damage):
    """A corrupted (or truncated) cell checkpoint is deleted and the cell recomputed from scratch: the result
    equals the uninterrupted cell's, and no error reaches the caller."""
    cell = RecoveryConfig(**S1, d=16, seeds=4, budget=1.2)  # 4916 steps: three chunks
    reference = run_recovery(cell)
    checkpoint = tmp_path / "cell.ckpt"
    if damage is None:  # the real checkpoint of an interrupted run of this cell, with one byte flipped
        from easyhard.train import run_online_sgd

        class Stop(Exception):
            pass

        calls = []

        def stop(k):  # inside the second chunk: the checkpoint at step 2048 is written (checkpoint_every=0)
            calls.append(k)
            if sum(calls) > 2500:
                raise Stop

        with pytest.raises(Stop):
            run_online_sgd(cell.net(), cell.data(), cell.sgd(), range(4), stop, checkpoint, checkpoint_every=0)
        blob = bytearray(checkpoint.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        checkpoint.write_bytes(bytes(blob))
    else:
        checkpoint.write_bytes(damage)
    assert run_recovery(cell, RunContext(checkpoint=checkpoint)) == reference
