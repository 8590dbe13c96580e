"""The exact reduced simulation (train/_reduced.py) and the persistent-recovery rule."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch
from scipy import stats

from easyhard._validate import ConfigError
from easyhard.data import MixedCumulantModel, make_latent_law
from easyhard.models import Committee, spherical_step
from easyhard.oracles import make_activation
from easyhard.train import OnlineSGDConfig, run_online_sgd
from easyhard.train._kernel import ACTIVATION_CODES, track_recovery
from easyhard.train._reduced import _chi2, reduced_step
from easyhard.train._rng import seed_states
from easyhard.train.online import REGISTRY
from easyhard.train.online.numba_engine import matched_coefficients
from easyhard.train.online.reduced_engine import TorchReducedEngine


def _s1(d: int) -> tuple[Committee, MixedCumulantModel]:
    """Setting S1 of docs/theory/calibration.md: beta_v = 20, Bernoulli(0.1)-Gaussian nu, t = 0.1, tanh with a_out = -1."""
    data = MixedCumulantModel.create(d=d, beta_u=0.0, beta_v=20.0, nu=make_latent_law("bernoulli_gauss", 0.1))
    return Committee(d, 1, make_activation("tanh"), a_out=-1.0), data


def _track(series, thr=0.5, persist=0.5):
    hit, pend, rec = (np.full(1, -1, np.int64) for _ in range(3))
    for n, al in enumerate(series, start=1):
        track_recovery(al, n, np.array([thr]), persist, hit, pend, rec)
    return int(hit[0]), int(rec[0])


def test_persistence_rule_drops_excursions():
    series = np.zeros(60)
    series[9:14] = 0.6  # crossing at step 10, gone at its check step 10 + 5 = 15
    series[19:] = 0.7  # crossing at step 20, still there at 30
    assert _track(series) == (10, 20)
    assert _track(series, persist=0.0) == (10, 10)  # no window: the first passage counts
    series[29] = 0.1  # the check step of the second candidate fails, the next crossing (31) is confirmed at 46
    assert _track(series) == (10, 31)
    assert _track(series[:45]) == (10, -1)  # still pending at the end of the budget: censored


@pytest.mark.parametrize("activation", ["tanh", "erf", "relu", "matched"])
def test_reduced_step_equals_full_step(activation):
    """One step of the chain, fed the projections of explicit d-dimensional draws, equals the full step."""
    d, t, eta, a_out, bu, bv, bm = 23, 0.3, 0.05, -1.3, 2.0, 5.0, 0.4
    gen = torch.Generator().manual_seed(5)
    data = MixedCumulantModel.create(d=d, beta_u=bu, beta_v=bv, beta_m=bm)
    act = make_activation(activation, data.law, bv, t)
    net = Committee(d, 1, act, a_out=a_out)
    u, v, m = data.spike_vectors(torch.float64)
    z, xi = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))
    lam, nu = 0.7, -1.0
    shrink = data.whitening_shrink
    x0 = z + math.sqrt(bu) * lam * u + (math.sqrt(bv) * nu * (1 - shrink) - shrink * (v @ z)) * v + bm * m
    a, s = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    xt = a * x0 + s * xi
    w = torch.randn(d, generator=gen, dtype=torch.float64) + 2.0 * v - u + 3.0 * xt / xt.norm()  # h > 0 (relu moves)
    w = w / w.norm()
    params = {"w": w.view(1, 1, d)}
    loss, grads = net.loss_and_gradients(params, x0.view(1, 1, d), xt.view(1, 1, d), torch.full((1, 1), t, dtype=torch.float64))
    w_new = spherical_step(params["w"], grads["w"], torch.tensor([eta], dtype=torch.float64))[0, 0]
    spikes = torch.stack([u, v, m])
    alpha = (spikes @ w).numpy().copy()
    e = w - spikes.T @ (spikes @ w)
    e = e / e.norm()
    proj_r = torch.eye(d, dtype=torch.float64) - spikes.T @ spikes - torch.outer(e, e)
    zp, xp = (spikes @ z).tolist(), (spikes @ xi).tolist()
    par = np.array(matched_coefficients(act) if activation == "matched" else (0.0, 0.0, 0.0))
    red_loss, norm = reduced_step(alpha, *zp, float(z @ e), *xp, float(xi @ e), lam, nu, float(z @ proj_r @ z),
                                  float(z @ proj_r @ xi), float(xi @ proj_r @ xi), math.sqrt(bu), math.sqrt(bv), shrink,
                                  bm, a, s, a, 1.0, ACTIVATION_CODES[activation], par, a_out, eta)
    np.testing.assert_allclose(alpha, (spikes @ w_new).numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(red_loss, float(loss), rtol=1e-12)
    g = grads["w"][0, 0]
    raw = w - eta * (g - (g @ w) * w)  # the spherical step before normalisation
    np.testing.assert_allclose(norm, float(raw.norm()), rtol=1e-12)
    assert np.abs(alpha - (spikes @ w).numpy()).max() > 1e-4  # the step did move the overlaps


@numba.njit
def _draw_chi2(df, n, state):
    out = np.empty(n)
    for i in range(n):
        out[i] = _chi2(df, state)
    return out


@pytest.mark.parametrize("df", [2.0, 7.0, 60.0, 1019.0])
def test_chi2_sampler_matches_scipy(df):
    x = _draw_chi2(df, 40_000, seed_states([int(df)])[0].copy())
    assert stats.kstest(x, stats.chi2(df).cdf).pvalue > 1e-3
    assert abs(x.mean() / df - 1) < 4 * math.sqrt(2 / df / x.size)


def test_reduced_engine_ensemble_equals_separate_runs():
    net, data = _s1(64)
    cfg = OnlineSGDConfig(steps=3000, delta=12.53, p=2, t=0.1, engine="reduced", dtype="float64", n_logs=10)
    together = run_online_sgd(net, data, cfg, [4, 8])
    alone = run_online_sgd(net, data, cfg, [8])
    np.testing.assert_array_equal(together.overlaps[:, 1], alone.overlaps[:, 0])
    np.testing.assert_array_equal(together.recovered[1], alone.recovered[0])
    assert np.abs(together.overlaps[-1] - together.overlaps[0]).max() > 1e-3


@pytest.mark.parametrize("kw,net", [
    ({}, Committee(16, 2)),
    ({"n_samples": 10}, Committee(16)),
    ({"t_range": (0.1, 0.5)}, Committee(16)),
    ({"spherical": False}, Committee(16)),
])
def test_reduced_engine_refuses_what_it_cannot_simulate(kw, net):
    cfg = OnlineSGDConfig(steps=10, engine="reduced", **kw)
    with pytest.raises(ConfigError, match="engine 'reduced' unavailable"):
        run_online_sgd(net, MixedCumulantModel.create(d=16), cfg, [0])


def _recovery_times(engine: str, d: int, runs: int, seed0: int) -> np.ndarray:
    net, data = _s1(d)
    steps = int(6 * 0.0205 * d**3)
    cfg = OnlineSGDConfig(steps=steps, delta=12.53, p=2, t=0.1, engine=engine, dtype="float64", thresholds=(0.5,),
                          n_logs=20)
    rec = run_online_sgd(net, data, cfg, range(seed0, seed0 + runs)).recoveries(0.5)[:, 0, 1]
    return np.where(rec >= 0, rec, np.inf)  # censored runs: +inf, above every recovery time


@pytest.mark.slow
@pytest.mark.parametrize("d", [32, 64])
def test_reduced_simulation_matches_full_engine_in_law(d):
    """Issue 5, item 2: recovery times of the reduced chain and of the d-dimensional engine agree (KS)."""
    full = _recovery_times("numba", d, 400, 0)
    reduced = _recovery_times("reduced", d, 400, 10_000)
    assert np.isfinite(full).mean() > 0.8 and np.isfinite(reduced).mean() > 0.8  # the test compares real times
    assert stats.ks_2samp(full, reduced).pvalue > 0.01


def test_torch_reduced_equals_numba_reduced(monkeypatch):
    """The torch implementation (used on CUDA) consumes the kernel's member streams on CPU: same numbers."""
    net, data = _s1(48)
    cfg = OnlineSGDConfig(steps=2500, delta=12.53, p=2, t=0.1, engine="reduced", dtype="float64", n_logs=15)
    kernel = run_online_sgd(net, data, cfg, [5, 6, 7])
    monkeypatch.setitem(REGISTRY["reduced"], "cpu", TorchReducedEngine)
    torch_run = run_online_sgd(net, data, cfg, [5, 6, 7])
    np.testing.assert_allclose(torch_run.overlaps, kernel.overlaps, rtol=0, atol=1e-11)
    np.testing.assert_allclose(torch_run.loss, kernel.loss, rtol=1e-11)
    np.testing.assert_array_equal(torch_run.recovered, kernel.recovered)
    assert np.abs(kernel.overlaps[-1] - kernel.overlaps[0]).max() > 1e-2


class _DeviceGeneratorEngine(TorchReducedEngine):
    """The CUDA draw path (one generator, torch normals and gamma draws), run on CPU."""

    def __init__(self, setup):
        super().__init__(setup)
        self.gen = torch.Generator().manual_seed(int(setup.states[0, 0] >> np.uint64(1)))


@pytest.mark.slow
def test_device_generator_draws_give_the_same_law(monkeypatch):
    """Recovery times with the device-generator draws (normals + torch's gamma sampler) match the kernel's (KS)."""
    numba_times = _recovery_times("reduced", 32, 400, 0)
    monkeypatch.setitem(REGISTRY["reduced"], "cpu", _DeviceGeneratorEngine)
    torch_times = _recovery_times("reduced", 32, 400, 20_000)
    assert np.isfinite(torch_times).mean() > 0.8
    assert stats.ks_2samp(numba_times, torch_times).pvalue > 0.01
