"""Staircase experiment: reductions, theory table, acceptance logic on small runs."""

import math

import numpy as np
import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.experiments import StaircaseConfig, oracle_levels, profile, run_staircase
from easyhard.experiments.staircase import CouplingTheory, _span_direction
from easyhard.oracles import MCMBayesDenoiser
from easyhard.theory import constant_term, overlap_loss


@pytest.fixture(scope="module")
def small_results():
    cfg = StaircaseConfig(dims=(24,), seeds=4, steps_per_d=30)
    return cfg, run_staircase(cfg)


def test_cells_hold_run_numbers(small_results):
    cfg, res = small_results
    cells = {c["coupling"]: c for c in res["cells"]}
    assert set(cells) == {"independent", "sign"}
    for c in cells.values():
        curves = c["curves"]
        assert len(curves["steps_over_d"]) == len(curves["abs_alpha_u"]["mean"])
        assert len(curves["loss"]["mean"]) == len(curves["steps_over_d"]) - 1
        assert c["final_abs_alpha_u"] == pytest.approx(curves["abs_alpha_u"]["mean"][-1])
        assert c["max_mean_abs_alpha_v"] >= c["final_abs_alpha_v"] - 1e-12
        assert np.linalg.norm(c["final_direction_mean"]) <= 1 + 1e-12
    sign = cells["sign"]
    assert len(sign["v_lag_after_u"]) == cfg.seeds and 0 <= sign["v_within_window"] <= 1
    assert set(res["acceptance"]["checks"]) == {"independent d=24", "sign d=24"}


def test_sgd_loss_tracks_population_loss(small_results):
    """The recorded sample loss (mean over seeds and a record interval) sits near the theory's L_t(w)."""
    _, res = small_results
    for c in res["cells"]:
        sgd = np.array(c["curves"]["loss"]["mean"][-5:])
        pop = np.array(c["curves"]["population_loss"]["mean"][-5:])
        assert np.abs(sgd - pop).max() < 0.1 * pop.mean()


def test_oracle_levels_order_and_bayes_value():
    cfg = StaircaseConfig()
    model = cfg.model(16, "sign")
    lv = oracle_levels(model, cfg.neuron.t)
    assert lv["bayes"] < lv["gaussian"]
    # Monte Carlo of the Bayes denoiser's total MSE
    gen = torch.Generator().manual_seed(0)
    x0 = model.sample(20000, gen, torch.float64)
    a, s = math.exp(-cfg.neuron.t), math.sqrt(-math.expm1(-2 * cfg.neuron.t))
    xt = a * x0 + s * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    err = ((x0 - MCMBayesDenoiser(model)(xt, cfg.neuron.t)) ** 2).sum(1)
    assert abs(err.mean().item() - lv["bayes"]) < 5 * err.std().item() / math.sqrt(len(err))


def test_population_table_matches_quadrature():
    cfg = StaircaseConfig()
    th = CouplingTheory.of(cfg, "sign")
    model, neuron = cfg.model(100, "sign"), cfg.single_neuron()
    rng = np.random.default_rng(0)
    r, ang = rng.uniform(0, 1, 20), rng.uniform(0, 2 * math.pi, 20)
    au, av = r * np.cos(ang), r * np.sin(ang)
    exact = constant_term(model, neuron) + overlap_loss(model, neuron, torch.from_numpy(au), torch.from_numpy(av)).numpy()
    np.testing.assert_allclose(th.population_loss(model, neuron, au, av), exact, atol=5e-3)
    assert th.minimiser is not None and th.minimiser[0] ** 2 + th.minimiser[1] ** 2 == pytest.approx(1)


def test_span_direction_sign_convention():
    alpha = np.array([[-0.6, -0.3, 0.1], [0.3, 0.4, 0.0]])
    out = _span_direction(alpha)
    np.testing.assert_allclose(out, [[0.6 / math.hypot(0.6, 0.3), 0.3 / math.hypot(0.6, 0.3)], [0.6, 0.8]])


def test_profiles_and_validation():
    assert profile("quick").dims == (64, 128, 256)
    assert profile("quick", seeds=3).seeds == 3
    with pytest.raises(ConfigError, match="profile"):
        profile("huge")
    with pytest.raises(ConfigError, match="dims must"):
        StaircaseConfig(dims=(4,))
    with pytest.raises(ConfigError, match="coupling"):
        StaircaseConfig(couplings=("invisible",))
