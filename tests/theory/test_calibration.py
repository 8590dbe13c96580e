"""Step-size calibration: gradient noise, leading coefficient, escape-time median and the S1 acceptance numbers."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import cumulative_trapezoid, quad
from scipy.sparse.linalg import spsolve

from easyhard._quadrature import gauss_hermite
from easyhard._validate import ConfigError
from easyhard.data import MixedCumulantModel, make_latent_law
from easyhard.models.committee import Committee
from easyhard.oracles import make_activation
from easyhard.theory import (
    SingleNeuron,
    calibrate,
    escape_barrier,
    escape_median,
    gradient_noise,
    leading_coefficient,
)
from easyhard.theory import calibration as cal


def s1_model(d=3):
    return MixedCumulantModel.create(d=d, beta_u=0.0, beta_v=20.0, nu=make_latent_law("bernoulli_gauss", 0.1))


def s1_neuron():
    return SingleNeuron(make_activation("tanh"), t=0.1, a_out=-1.0)


def canonical():
    model = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=5.0, nu=make_latent_law("rademacher"))
    return model, SingleNeuron(make_activation("tanh"), t=0.3, a_out=1.0)


# ----- gradient noise ---------------------------------------------------------------------------

def spec_gradient_noise(neuron):
    """docs/theory/calibration.md: G^2 = 4 a^2 [Delta (E s^2 + E s'^2) + a^2 E(s^2 s'^2)], h ~ N(0, 1), by Gauss-Hermite."""
    h, w = gauss_hermite(200)
    s, ds = neuron.activation(h), neuron.activation.derivative(h)
    e = lambda f: float((w * f).sum())  # noqa: E731
    return 4 * neuron.a_out**2 * (neuron.delta * (e(s**2) + e(ds**2)) + neuron.a_out**2 * e(s**2 * ds**2))


@pytest.mark.parametrize("activation,t,a_out", [
    ("tanh", 0.1, -1.0), ("tanh", 0.3, 1.0), ("erf", 0.5, 0.7), ("sigmoid", 1.0, -2.0),
])
def test_gradient_noise_equals_spec_closed_form_at_default_skip(activation, t, a_out):
    neuron = SingleNeuron(make_activation(activation), t=t, a_out=a_out)
    assert gradient_noise(neuron) == pytest.approx(spec_gradient_noise(neuron), rel=1e-10)


def test_gradient_noise_explicit_default_skip_is_the_default():
    neuron = SingleNeuron(make_activation("tanh"), t=0.3)
    explicit = SingleNeuron(make_activation("tanh"), t=0.3, skip=math.exp(-0.3))
    assert gradient_noise(explicit) == pytest.approx(gradient_noise(neuron), rel=1e-14)


def monte_carlo_gradient_noise(neuron, d=400, n=40_000, seed=1, chunk=4000):
    """Mean and standard error of ||g - (g.w) w||^2 / (d - 1) from Committee.gradients (one sample per member).

    Data: S1 (beta_u = 0, whitened v of unit variance), w orthogonal to the spikes e_1, e_2, e_3; then every
    direction orthogonal to w has unit variance and E||g_perp||^2 = (d - 1) G^2 exactly at finite d.
    """
    gen = torch.Generator().manual_seed(seed)
    model = s1_model(d)
    net = Committee(d=d, activation=neuron.activation, a_out=neuron.a_out, skip=neuron.skip)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    w[:3] = 0.0
    w = w / w.norm()
    values = []
    for _ in range(n // chunk):
        x0 = model.sample(chunk, generator=gen, dtype=torch.float64)
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        x_t = neuron.a * x0 + math.sqrt(neuron.delta) * noise
        g = net.gradients({"w": w.expand(chunk, 1, d)}, x0[:, None], x_t[:, None], neuron.t)["w"][:, 0]
        g_perp = g - (g @ w)[:, None] * w
        values.append((g_perp**2).sum(-1) / (d - 1))
    values = torch.cat(values)
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


@pytest.mark.parametrize("neuron", [
    SingleNeuron(make_activation("tanh"), t=0.1, a_out=-1.0),  # S1, default skip
    SingleNeuron(make_activation("tanh"), t=0.3, skip=0.3, a_out=1.5),
    SingleNeuron(make_activation("relu"), t=0.5, skip=1.2, a_out=0.7),
], ids=["s1-default-skip", "tanh-skip-0.3", "relu-skip-1.2"])
def test_gradient_noise_matches_committee_monte_carlo(neuron):
    mean, se = monte_carlo_gradient_noise(neuron)
    g2 = gradient_noise(neuron)
    assert abs(mean - g2) < 4 * se, (mean, g2, se)
    if neuron.skip is not None:  # the general-skip terms matter: the default-skip formula would fail the check
        default = SingleNeuron(neuron.activation, neuron.t, None, neuron.a_out)
        assert abs(gradient_noise(default) - mean) > 10 * se


# ----- leading coefficient ----------------------------------------------------------------------

def test_leading_coefficient_s1_and_canonical():
    k, c4 = leading_coefficient(s1_model(), s1_neuron())
    assert k == 4 and c4 == pytest.approx(-0.867, rel=2e-3)
    k, c4 = leading_coefficient(*canonical())
    assert k == 4 and c4 == pytest.approx(-0.0189, rel=5e-3)


def test_leading_coefficient_u_and_skewed_v():
    model = MixedCumulantModel.create(d=3, beta_u=5.0, beta_v=5.0)
    k, c2 = leading_coefficient(model, SingleNeuron(make_activation("tanh"), t=0.3), "u")
    assert k == 2 and c2 == pytest.approx(-1.526, rel=1e-3)  # docs/theory/mcm.md section 6.5
    skewed = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=5.0, nu=make_latent_law("two_point", 0.1))
    k, c3 = leading_coefficient(skewed, SingleNeuron(make_activation("relu"), t=0.5))
    assert k == 3 and c3 != 0


def test_leading_coefficient_coupled_v_is_the_pure_v_term():
    """Coupled latents: v's own term c_(0,4) (from a random start), not the mixed c_11."""
    model = MixedCumulantModel.create(d=3, beta_u=5.0, beta_v=5.0, coupling="sign")
    independent = MixedCumulantModel.create(d=3, beta_u=5.0, beta_v=5.0)
    neuron = SingleNeuron(make_activation("tanh"), t=0.3)
    assert leading_coefficient(model, neuron) == pytest.approx(leading_coefficient(independent, neuron), rel=1e-10)


@pytest.mark.parametrize("activation,nu,beta_u,direction", [
    ("relu", "rademacher", 0.0, "v"),  # blind spot: no symmetric term at any order
    ("tanh", "rademacher", 0.0, "u"),  # no covariance spike
])
def test_leading_coefficient_absent_direction_raises(activation, nu, beta_u, direction):
    model = MixedCumulantModel.create(d=3, beta_u=beta_u, beta_v=5.0, nu=make_latent_law(nu))
    with pytest.raises(ConfigError, match="does not enter the loss"):
        leading_coefficient(model, SingleNeuron(make_activation(activation), t=0.5), direction)


def test_leading_coefficient_bad_direction():
    with pytest.raises(ConfigError, match="direction"):
        leading_coefficient(s1_model(), s1_neuron(), "m")


# ----- escape median ----------------------------------------------------------------------------

@pytest.mark.parametrize("zeta,expected", [(0.15, 6.47), (0.3, 2.97), (0.6, 1.50), (1.0, 0.93)])
def test_escape_median_matches_spec_table(zeta, expected):
    assert escape_median(zeta) == pytest.approx(expected, rel=0.02)


def euler_maruyama_escape_times(zeta, k, n, dt, seed, s_escape, n_needed):
    """Sorted escape times of the first n_needed of n paths: Euler-Maruyama until |s| >= s_escape, plus the
    deterministic drift time from s_escape to infinity (beyond it the drift dwarfs the noise)."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(n)
    t, times = 0.0, []
    while len(times) < n_needed:
        s = s + (zeta * s ** (k - 1) - 0.5 * s) * dt + math.sqrt(dt) * rng.standard_normal(s.size)
        t += dt
        out = np.abs(s) >= s_escape
        times.extend([t - dt / 2] * int(out.sum()))
        s = s[~out]
    tail = quad(lambda x: 1 / (zeta * x ** (k - 1) - x / 2), s_escape, math.inf)[0]
    return np.sort(times)[:n_needed] + tail


@pytest.mark.parametrize("zeta,k,s_escape", [(0.3, 4, 5.0), (1.0, 4, 5.0), (1.0, 3, 10.0)])
def test_escape_median_matches_monte_carlo(zeta, k, s_escape):
    """PDE median inside the distribution-free 3-sigma rank interval of the Monte Carlo median, widened by
    the Euler-Maruyama bias at dt = 1e-3. Bias measured with coupled paths (dt vs dt/2, 1.2e5 paths):
    +0.13 % (zeta 0.3), +0.35 % (zeta 1), +0.10 % (k = 3); allowed 0.5 %."""
    n, dt, bias = 20_000, 1e-3, 0.005
    lo_rank = math.floor(n / 2 - 1.5 * math.sqrt(n))
    hi_rank = math.ceil(n / 2 + 1.5 * math.sqrt(n))
    times = euler_maruyama_escape_times(zeta, k, n, dt, seed=7, s_escape=s_escape, n_needed=hi_rank)
    t_star = escape_median(zeta, k)
    assert times[lo_rank - 1] * (1 - bias) <= t_star <= times[hi_rank - 1] * (1 + bias)
    # the interval is informative: a few percent wide
    assert times[hi_rank - 1] / times[lo_rank - 1] < 1.08


def test_escape_median_decreases_with_zeta():
    for k in (3, 4):
        values = [escape_median(z, k) for z in (0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0, 2.0)]
        assert all(a > b for a, b in zip(values, values[1:])), values


def test_escape_median_small_zeta_follows_arrhenius():
    """Below zeta ~ 0.05, T* ~ exp(1/(8 zeta)) (barrier 1/(16 zeta), diffusion 1/2): the log-slope in 1/zeta is 1/8."""
    z1, z2 = 0.03, 0.025
    slope = math.log(escape_median(z2) / escape_median(z1)) / (1 / z2 - 1 / z1)
    assert slope == pytest.approx(1 / 8, rel=0.1)


def test_survival_generator_mean_exit_time_matches_exact_formula():
    """The discretised generator A (the PDE's space part) solves A T = -1 for the mean exit time from
    (-L, L): T(x) = 2 int_|x|^L e^(-2B(y)) int_0^y e^(2B(z)) dz dy, B(y) = zeta y^4/4 - y^2/4 (k = 4)."""
    zeta, L = 0.3, 5.0
    s = cal._escape_grid(L, cal._GRID_SPACING)
    mean_exit = spsolve(cal._survival_generator(s, zeta, 4), -np.ones(s.size - 2))
    mean_pde = float((cal._start_weights(s) * mean_exit).sum())
    y = np.linspace(0, L, 200_001)
    B = zeta * y**4 / 4 - y**2 / 4
    inner = cumulative_trapezoid(np.exp(2 * B), y, initial=0)
    outer = 2 * np.exp(-2 * B) * inner
    t_of_x = outer[::-1].cumsum()[::-1] * (y[1] - y[0]) - 0.5 * (y[1] - y[0]) * (outer + outer[-1])
    density = 2 * np.exp(-y**2 / 2) / math.sqrt(2 * math.pi)
    mean_exact = np.trapezoid(t_of_x * density, y) / np.trapezoid(density, y)
    assert mean_pde == pytest.approx(mean_exact, rel=1e-5)


def test_escape_median_is_independent_of_numerical_parameters():
    """Refining the grid 4x, the time step 4x and doubling s_max moves T* by < 5e-4 (documented accuracy)."""
    for zeta, k in ((0.3, 4), (1.0, 3)):
        t_coarse = cal._coarse_median(zeta, k)
        s_max = 2 * cal._absorbing_radius(zeta, k, t_coarse)
        fine = cal._median_first_passage(zeta, k, s_max, cal._GRID_SPACING / 4, t_coarse / (4 * cal._TIME_STEPS))
        assert escape_median(zeta, k) == pytest.approx(fine + cal._tail_time(s_max, zeta, k), rel=5e-4)


@pytest.mark.parametrize("zeta,k,match", [
    (0.0, 4, "zeta"), (-1.0, 4, "zeta"), (math.nan, 4, "zeta"), (0.3, 2, "k"), (0.3, 3.5, "k"), (1e-3, 4, "too small"),
])
def test_escape_median_bad_input(zeta, k, match):
    with pytest.raises(ConfigError, match=match):
        escape_median(zeta, k)


def test_escape_barrier():
    assert escape_barrier(0.3) == pytest.approx(1 / math.sqrt(0.6))
    assert escape_barrier(0.3, 3) == pytest.approx(1 / 0.6)
    s_c = escape_barrier(0.7, 6)
    assert 0.7 * s_c**5 - s_c / 2 == pytest.approx(0.0, abs=1e-12)


# ----- calibrate --------------------------------------------------------------------------------

def test_calibrate_s1_acceptance():
    """docs/theory/calibration.md setting S1: c_4 = -0.867, G^2 = 0.923, eps = 12.53 at zeta = 0.3, n_med = 0.0205 d^3."""
    c = calibrate(s1_model(), s1_neuron())
    assert (c.direction, c.k, c.attractive, c.zeta) == ("v", 4, True, 0.3)
    assert c.c_k == pytest.approx(-0.867, rel=0.02)
    assert c.G2 == pytest.approx(0.923, rel=0.02)
    assert c.eps == pytest.approx(12.53, rel=0.02)
    assert c.n_med_coefficient == pytest.approx(0.0205, rel=0.02)
    assert c.R == pytest.approx(1.23, rel=0.02)
    assert c.barrier == pytest.approx(1 / math.sqrt(0.6)) and c.min_dimension == 27 and c.warnings == ()
    # the k = 4 form of the same prediction: n_med = T* zeta^2 G^2 / (16 c_4^2) d^3 (docs/theory/mcm.md section 8.3)
    assert c.n_med_coefficient == pytest.approx(c.t_star * c.zeta**2 * c.G2 / (16 * c.c_k**2), rel=1e-12)
    assert c.step(64) == pytest.approx(c.eps / 64**2) and c.predicted_median(64) == pytest.approx(
        c.n_med_coefficient * 64**3)


def test_calibrate_canonical_setting():
    c = calibrate(*canonical(), zeta=0.15)
    assert c.c_k == pytest.approx(-0.0189, rel=0.03) and c.G2 == pytest.approx(1.85, rel=0.03)
    assert c.R == pytest.approx(5200, rel=0.03)
    assert c.eps == pytest.approx(0.273, rel=0.01)  # docs/theory/calibration.md: "canonical setting with the right step"


def test_calibrate_eps_and_zeta_are_equivalent():
    by_zeta = calibrate(s1_model(), s1_neuron(), zeta=0.6)
    by_eps = calibrate(s1_model(), s1_neuron(), eps=by_zeta.eps)
    assert by_eps.zeta == pytest.approx(0.6, rel=1e-12)
    assert by_eps.n_med_coefficient == pytest.approx(by_zeta.n_med_coefficient, rel=1e-12)
    assert by_zeta.t_star == pytest.approx(escape_median(0.6))


def test_calibrate_odd_order():
    """k = 3 (skewed latent, relu): zeta = 3|c_3|/(eps G^2), eta = eps/d^1.5, n_med ~ d^2, barrier 1/(2 zeta)."""
    model = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=5.0, nu=make_latent_law("two_point", 0.1))
    neuron = SingleNeuron(make_activation("relu"), t=0.5)
    c = calibrate(model, neuron, zeta=0.5)
    assert c.k == 3 and c.attractive
    assert c.eps == pytest.approx(3 * abs(c.c_k) / (0.5 * gradient_noise(neuron)), rel=1e-12)
    assert c.step(100) == pytest.approx(c.eps / 1000) and c.barrier == pytest.approx(1.0)
    assert c.predicted_median(10) == pytest.approx(escape_median(0.5, 3) / (c.eps**2 * c.G2) * 100)


def test_calibrate_repelled_direction_warns():
    """tanh with a_out = +1 and a leptokurtic latent at t = 0.2: c_4 > 0 (docs/theory/mcm.md section 6.6)."""
    model = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=10.0, nu=make_latent_law("bernoulli_gauss", 0.1))
    c = calibrate(model, SingleNeuron(make_activation("tanh"), t=0.2))
    assert c.c_k > 0 and not c.attractive and c.t_star is None and c.n_med_coefficient is None
    assert c.predicted_median(64) == math.inf and any("repelled" in w for w in c.warnings)


def test_calibrate_regime_warnings():
    model = MixedCumulantModel.create(d=3, beta_u=0.0, beta_v=5.0)
    weak = calibrate(model, SingleNeuron(make_activation("tanh"), t=0.12))
    assert weak.attractive and abs(weak.c_k) < 1e-3 and any("too weak" in w for w in weak.warnings)
    assert any("outside the recommended" in w for w in calibrate(s1_model(), s1_neuron(), zeta=0.05).warnings)
    assert any("outside the recommended" in w for w in calibrate(s1_model(), s1_neuron(), zeta=2.0).warnings)
    with_u = calibrate(MixedCumulantModel.create(d=3, beta_u=5.0, beta_v=5.0), canonical()[1])
    assert any("u (k = 2) is learned first" in w for w in with_u.warnings)


def test_dimension_warning_follows_the_barrier():
    c = calibrate(s1_model(), s1_neuron())  # s_c = 1.29, threshold 0.5: need 0.5 sqrt(d) >= 2.58
    assert c.dimension_warning(16) is not None and c.dimension_warning(26) is not None
    assert c.dimension_warning(27) is None and c.dimension_warning(1024) is None
    assert calibrate(s1_model(), s1_neuron(), threshold=0.25).min_dimension == 107


@pytest.mark.parametrize("model,kwargs,match", [
    (MixedCumulantModel.create(d=3, beta_u=5.0, beta_v=5.0), {"direction": "u"}, "d log d"),
    (MixedCumulantModel.create(d=3, beta_u=5.0, beta_v=5.0, coupling="sign"), {}, "jointly"),
    (s1_model(), {"zeta": 0.3, "eps": 12.0}, "either zeta or eps"),
    (s1_model(), {"zeta": -1.0}, "zeta"),
    (s1_model(), {"eps": 0.0}, "eps"),
    (s1_model(), {"threshold": 1.5}, "threshold"),
    (s1_model(), {"direction": "w"}, "direction"),
])
def test_calibrate_refuses(model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        calibrate(model, s1_neuron(), **kwargs)


def test_calibration_to_dict_is_json():
    c = calibrate(s1_model(), s1_neuron())
    d = json.loads(json.dumps(c.to_dict()))
    assert d["k"] == 4 and d["G2"] == c.G2 and d["step_formula"] == "eta = 12.53 / d^2" and d["warnings"] == []
    with pytest.raises(ConfigError, match="d"):
        c.step(0)


@pytest.mark.parametrize("zeta,k", [(0.3, 4), (2.0, 4), (1.0, 3), (0.3, 6)])
def test_survival_generator_is_a_markov_generator(zeta, k):
    """Upwinding where the drift dominates keeps the scheme monotone: off-diagonal rates >= 0 and rows
    summing to 0 (to < 0 next to the absorbing ends), so the discrete survival stays in [0, 1]."""
    s = cal._escape_grid(30.0, cal._GRID_SPACING)
    A = cal._survival_generator(s, zeta, k).toarray()
    off = A - np.diag(np.diag(A))
    assert off.min() >= 0
    rows = A.sum(1)
    assert np.abs(rows[1:-1]).max() < 1e-8 * np.abs(np.diag(A)).max() and rows[0] < 0 and rows[-1] < 0
