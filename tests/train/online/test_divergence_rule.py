"""One divergence rule for every online-SGD engine (issue 14, easyhard.train.divergence): the same extreme step
sizes stop every engine, in both precisions and for spherical and plain SGD, and a normal step size stops none."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from easyhard.data import MixedCumulantModel
from easyhard.models import Committee, spherical_step
from easyhard.train import DivergenceError, OnlineSGDConfig, run_online_sgd
from easyhard.train.divergence import WEIGHT_NORM_BOUND, diverged_members
from easyhard.train.online import driver
from easyhard.train.online.torch_engine import spherical_step_norms

D, SEEDS = 16, [1, 2]
DATA = MixedCumulantModel.create(d=D, beta_u=5.0, beta_v=5.0, beta_m=0.5)
# (engine, spherical): the reduced chain exists for spherical SGD only
ENGINES = [("numba", True), ("torch", True), ("reduced", True), ("numba", False), ("torch", False)]


def _run(engine: str, spherical: bool, delta: float, dtype: str = "float64", **kw):
    cfg = OnlineSGDConfig(steps=60, delta=delta, spherical=spherical, engine=engine, dtype=dtype, n_logs=8, **kw)
    with warnings.catch_warnings():  # overflowing numpy/torch arithmetic may warn on the way to the error
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_online_sgd(Committee(d=D), DATA, cfg, SEEDS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("delta", [1e30, 1e300])
@pytest.mark.parametrize("engine,spherical", ENGINES)
def test_extreme_step_sizes_stop_every_engine_at_the_first_record(engine, spherical, delta, dtype):
    """Before the rule, spherical numba at 1e30 returned finite numbers (torch float32 raised) and reduced at 1e300
    reported all-zero overlaps: now every engine stops at step 1 with the same message."""
    with pytest.raises(DivergenceError, match=r"by step 1 in members \[0, 1\]; lower delta"):
        _run(engine, spherical, delta, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("engine,spherical", ENGINES)
def test_normal_step_size_stops_no_engine(engine, spherical, dtype):
    res = _run(engine, spherical, 0.5, dtype)
    assert np.isfinite(res.overlaps).all() and np.isfinite(res.loss).all()
    assert not np.allclose(res.overlaps[0], res.overlaps[-1])  # the run did move


def test_rule_bounds():
    """The rule itself: finite overlaps and loss, and a peak norm at most the bound (NaN peak is outside)."""
    ok_ov, ok_loss = np.zeros((5, 2, 3)), np.ones(5)
    peak = np.array([1.0, WEIGHT_NORM_BOUND, np.nextafter(WEIGHT_NORM_BOUND, np.inf), np.inf, np.nan])
    np.testing.assert_array_equal(diverged_members(ok_ov, ok_loss, peak), [False, False, True, True, True])
    ov, loss = ok_ov.copy(), ok_loss.copy()
    ov[1, 1, 2], loss[3] = np.nan, np.inf
    np.testing.assert_array_equal(diverged_members(ov, loss, np.ones(5)), [False, True, False, True, False])


def _peaks(monkeypatch, engine: str, **kw) -> np.ndarray:
    """The peak weight norms (records, E) the driver checked during a normal run."""
    seen = []

    def check(overlaps, loss, peak, step):
        seen.append(peak)
        check_members(overlaps, loss, peak, step)

    check_members = driver.check_members
    monkeypatch.setattr(driver, "check_members", check)
    cfg = OnlineSGDConfig(steps=300, delta=0.8, engine=engine, dtype="float64", n_logs=8, **kw)
    run_online_sgd(Committee(d=D, K=2, second_layer="untied", a_out=2.0), DATA, cfg, SEEDS)
    return np.array(seen)


@pytest.mark.parametrize("spherical", [True, False])
def test_numba_and_torch_track_the_same_peak_norm(monkeypatch, spherical):
    """Same random numbers, same weights: the two engines track the same peak (the kernel's pre-normalisation norm
    and the torch engine's closed form of it; ||o_k|| of the untied layer included) at every record."""
    a = _peaks(monkeypatch, "numba", spherical=spherical)
    b = _peaks(monkeypatch, "torch", spherical=spherical)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert (np.diff(a, axis=0) >= 0).all() and (a[-1] > a[0]).all()  # a running maximum that grew


def test_spherical_step_norms_is_the_norm_before_normalisation():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn((3, 2, D), generator=gen, dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True)
    g = torch.randn((3, 2, D), generator=gen, dtype=torch.float64)
    eta = torch.tensor([0.1, 1.0, 30.0], dtype=torch.float64)
    g_perp = g - (g * w).sum(-1, keepdim=True) * w
    raw = w - eta[:, None, None] * g_perp
    norms = spherical_step_norms(w, g, eta)
    torch.testing.assert_close(norms, raw.norm(dim=-1), rtol=1e-13, atol=0)
    torch.testing.assert_close(spherical_step(w, g, eta), raw / norms[..., None], rtol=1e-13, atol=1e-15)
