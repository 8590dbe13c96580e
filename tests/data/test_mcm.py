"""The mixed cumulant model: spikes, whitening, exact statistics, sampler (docs/theory/mcm.md sections 1.1-1.6).

Exact statistics are checked against closed forms written out here and against Monte Carlo
estimates with a standard error estimated from the same samples (delta method for cumulants);
the tolerance is Z_MAX standard errors.
"""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.special import gamma

from easyhard import ConfigError
from easyhard.data.latents import BernoulliGauss, Laplace, LatentPair, Rademacher, TwoPoint
from easyhard.data.mcm import GaussianModel, MixedCumulantModel

Z_MAX = 5.0  # O(100) comparisons per file: P(max |N(0,1)| > 5) ~ 6e-5
N_MC = 400_000
D = 6


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cumulant_stats(y: torch.Tensor) -> dict[int, tuple[float, float]]:
    """{p: (kappa_p estimate, tolerance unit)} for p = 3, 4: delta-method standard error + 4/n.

    The 4/n term covers the O(1/n) bias of plug-in cumulants, which dominates when the first-order
    variance vanishes (e.g. a Rademacher-like variable).
    """
    n = y.numel()
    c = y - y.mean()
    m2, m3, m4 = (c**2).mean(), (c**3).mean(), (c**4).mean()
    if3 = c**3 - m3 - 3 * m2 * c
    if4 = c**4 - m4 - 4 * m3 * c - 6 * m2 * (c**2 - m2)
    se = lambda f: float(f.std()) / math.sqrt(n) + 4.0 / n  # noqa: E731
    return {3: (float(m3), se(if3)), 4: (float(m4 - 3 * m2**2), se(if4))}


def _assert_mean_cov(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
    """Every entry of the sample mean and of the sample covariance within Z_MAX standard errors."""
    n = x.shape[0]
    c = x - mean  # centre at the exact mean: the covariance estimate is then unbiased
    se_mean = x.std(0) / math.sqrt(n)
    assert bool(((x.mean(0) - mean).abs() <= Z_MAX * se_mean).all()), (x.mean(0), mean)
    prods = c[:, :, None] * c[:, None, :]
    est = prods.mean(0)
    se = prods.std(0) / math.sqrt(n)
    worst = float(((est - cov).abs() / se).max())
    assert worst <= Z_MAX, f"covariance off by {worst:.1f} standard errors:\n{est}\nvs\n{cov}"


def _model(**kw) -> MixedCumulantModel:
    kw.setdefault("d", D)
    return MixedCumulantModel.create(**kw)


# ----------------------------------------------------------------------------- spikes and whitening
@pytest.mark.parametrize("spikes, seed", [("fixed", 0), ("random", 0), ("random", 12345)])
@pytest.mark.parametrize("d", [3, 7, 64])
def test_spikes_are_orthonormal(spikes, seed, d):
    model = MixedCumulantModel.create(d=d, spikes=spikes, spike_seed=seed)
    basis = model.spike_vectors(torch.float64)
    assert basis.shape == (3, d)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-14)
    if spikes == "fixed":
        torch.testing.assert_close(basis, torch.eye(3, d, dtype=torch.float64), rtol=0, atol=0)
    b32 = model.spike_vectors(torch.float32)
    assert b32.dtype == torch.float32
    torch.testing.assert_close(b32, basis.float(), rtol=0, atol=1e-7)


def test_random_spikes_reproducible_from_seed():
    a = MixedCumulantModel.create(d=20, spikes="random", spike_seed=3).spike_vectors()
    b = MixedCumulantModel.create(d=20, spikes="random", spike_seed=3).spike_vectors()
    c = MixedCumulantModel.create(d=20, spikes="random", spike_seed=4).spike_vectors()
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 0.1
    # they are genuinely random directions, not the coordinate axes
    assert float((a - torch.eye(3, 20)).abs().max()) > 0.1
    # the global RNG is not consumed
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    MixedCumulantModel.create(d=20, spikes="random", spike_seed=3).spike_vectors()
    assert torch.equal(torch.rand(1), before)


@pytest.mark.parametrize("spikes", ["fixed", "random"])
@pytest.mark.parametrize("beta_v", [0.0, 1.0, 5.0, 37.5])
def test_whitening_matrix_is_inverse_square_root(spikes, beta_v):
    model = _model(d=9, beta_v=beta_v, spikes=spikes, spike_seed=2)
    v = model.spike_vectors(torch.float64)[1]
    target = torch.eye(9, dtype=torch.float64) + beta_v * torch.outer(v, v)
    # independent computation 1: eigendecomposition
    evals, evecs = torch.linalg.eigh(target)
    s_eig = (evecs * evals.rsqrt()) @ evecs.T
    # independent computation 2: scipy's matrix square root
    s_scipy = torch.from_numpy(np.linalg.inv(np.real(scipy.linalg.sqrtm(target.numpy()))))
    S = model.whitening_matrix()
    torch.testing.assert_close(S, s_eig, rtol=0, atol=1e-13)
    torch.testing.assert_close(S, s_scipy, rtol=0, atol=1e-10)
    torch.testing.assert_close(S @ target @ S, torch.eye(9, dtype=torch.float64), rtol=0, atol=1e-12)
    # the rank-one application equals the matrix product, on batches of any leading shape
    y = torch.randn(4, 5, 9, generator=_gen(0), dtype=torch.float64)
    torch.testing.assert_close(model.whiten(y, v), y @ S.T, rtol=0, atol=1e-13)
    # S leaves u and m untouched
    u, _, m = model.spike_vectors(torch.float64)
    torch.testing.assert_close(S @ u, u, rtol=0, atol=1e-14)
    torch.testing.assert_close(S @ m, m, rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- exact statistics
def test_spec_check_values():
    # docs/theory/mcm.md section 1.5: beta_u = beta_v = 5, Rademacher
    model = _model(beta_u=5.0, beta_v=5.0)
    cov = model.covariance()
    assert float(cov[0, 0]) == pytest.approx(6.0, abs=1e-14)  # Var(u.x0)
    assert float(cov[1, 1]) == pytest.approx(1.0, abs=1e-14)  # Var(v.x0)
    assert float(cov[0, 1]) == 0.0
    assert model.projected_cumulant((0.0, 1.0), 4) == pytest.approx(-1.389, abs=5e-4)
    assert model.projected_cumulant((0.0, 1.0), 4) == pytest.approx((5 / 6) ** 2 * -2, abs=1e-14)
    sign = _model(beta_u=5.0, beta_v=5.0, coupling="sign")
    assert sign.c_uv == pytest.approx(1.629, abs=5e-4)
    assert sign.c_uv == pytest.approx(math.sqrt(2 / math.pi) * math.sqrt(5 * 5 / 6), abs=1e-14)
    assert float(sign.covariance()[0, 1]) == pytest.approx(sign.c_uv, abs=1e-15)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(coupling="sign"),
    dict(coupling="sign", q=0.5, beta_m=1.5, spikes="random", spike_seed=5),
    dict(coupling="invisible", beta_u=2.0, beta_v=10.0),
    dict(nu=Laplace(), beta_u=1.0, beta_v=3.0, beta_m=0.7),
    dict(nu=TwoPoint(0.1), beta_m=2.0, spikes="random", spike_seed=1),
], ids=["rademacher", "sign", "sign-q0.5-mean-random", "invisible", "laplace-mean", "two_point-mean-random"])
def test_mean_and_covariance_match_monte_carlo(kw):
    model = _model(**kw)
    u, v, m = model.spike_vectors(torch.float64)
    # the closed form of docs/theory/mcm.md section 1.5, written independently of the code
    c_uv = model.latents.rho * math.sqrt(model.beta_u * model.beta_v / (1 + model.beta_v))
    cov = (torch.eye(D, dtype=torch.float64) + model.beta_u * torch.outer(u, u)
           + c_uv * (torch.outer(u, v) + torch.outer(v, u)))
    torch.testing.assert_close(model.covariance(), cov, rtol=0, atol=1e-14)
    torch.testing.assert_close(model.mean(), model.beta_m * m, rtol=0, atol=0)
    x = model.sample(N_MC, _gen(1), dtype=torch.float64)
    _assert_mean_cov(x, model.mean(), model.covariance())


def _sign_coupled_cumulant(A: float, B: float, q: float, order: int) -> float:
    """kappa_p of A lambda + B nu for nu = sign(lambda) w.p. q, else independent Rademacher (closed form).

    Raw moments are mixtures: E y^k = q E(A lambda + B sign lambda)^k + (1 - q) E(A lambda + B eps)^k, and
    E[lambda^j sign(lambda)^i] = E|lambda|^j (j, i odd), E lambda^j (i even), 0 otherwise;
    E|lambda|^j = 2^(j/2) Gamma((j+1)/2) / sqrt(pi).
    """
    abs_mom = lambda j: 2 ** (j / 2) * gamma((j + 1) / 2) / math.sqrt(math.pi)  # noqa: E731
    gauss_mom = lambda j: 0.0 if j % 2 else abs_mom(j)  # noqa: E731

    def raw(k):
        coupled = indep = 0.0
        for j in range(k + 1):
            i = k - j
            binom = math.comb(k, j) * A**j * B**i
            if i % 2 == 0:
                coupled += binom * gauss_mom(j)
                indep += binom * gauss_mom(j)
            elif j % 2 == 1:
                coupled += binom * abs_mom(j)
        return q * coupled + (1 - q) * indep

    m1, m2, m3, m4 = (raw(k) for k in (1, 2, 3, 4))
    mu2 = m2 - m1**2
    mu3 = m3 - 3 * m1 * m2 + 2 * m1**3
    mu4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    return mu3 if order == 3 else mu4 - 3 * mu2**2


THETA = 0.7
DIRECTIONS = [(0.0, 1.0), (1.0, 0.0), (math.cos(THETA), math.sin(THETA)), (-math.sin(2.0), math.cos(2.0))]


@pytest.mark.parametrize("q", [1.0, 0.5])
def test_projected_cumulant_sign_coupling_closed_form(q):
    model = _model(coupling="sign", q=q, beta_u=5.0, beta_v=5.0)
    b = math.sqrt(5 / 6)
    for cu, cv in DIRECTIONS:
        for order in (3, 4):
            expected = _sign_coupled_cumulant(cu * math.sqrt(5.0), cv * b, q, order)
            assert model.projected_cumulant((cu, cv), order) == pytest.approx(expected, abs=1e-10), (cu, cv, order)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(coupling="sign"),
    dict(coupling="sign", q=0.5),
    dict(coupling="invisible"),
    dict(nu=TwoPoint(0.1)),
    dict(nu=Laplace(), beta_v=10.0),
], ids=["rademacher", "sign", "sign-q0.5", "invisible", "two_point", "laplace"])
def test_projected_cumulant_matches_monte_carlo(kw):
    model = _model(beta_u=5.0, beta_v=kw.pop("beta_v", 5.0), beta_m=0.5, **kw)
    x = model.sample(N_MC, _gen(2), dtype=torch.float64)
    u, v, _ = model.spike_vectors(torch.float64)
    for cu, cv in DIRECTIONS:
        stats = _cumulant_stats(x @ (cu * u + cv * v))
        for order in (3, 4):
            exact = model.projected_cumulant((cu, cv), order)
            est, se = stats[order]
            assert abs(est - exact) <= Z_MAX * se, f"dir ({cu:.3f}, {cv:.3f}) order {order}: {est:.4f} vs {exact:.4f}"


@pytest.mark.parametrize("law", [Rademacher(), TwoPoint(0.1), TwoPoint(0.3), Laplace(), BernoulliGauss(0.2)], ids=repr)
def test_projected_cumulant_independent_closed_form(law):
    model = _model(nu=law, beta_v=3.0)
    b = math.sqrt(3 / 4)
    for cu, cv in DIRECTIONS:
        assert model.projected_cumulant((cu, cv), 3) == pytest.approx((cv * b) ** 3 * law.kappa3, abs=1e-14)
        assert model.projected_cumulant((cu, cv), 4) == pytest.approx((cv * b) ** 4 * law.kappa4, abs=1e-13)
    assert TwoPoint(0.1).kappa3 > 2  # the kappa_3 case is non-trivial


@pytest.mark.parametrize("coupling", ["independent", "sign", "invisible"])
def test_projected_cumulant_tensor_direction_equals_pair(coupling):
    model = _model(d=8, coupling=coupling, spikes="random", spike_seed=9)
    u, v, _ = model.spike_vectors(torch.float64)
    for cu, cv in DIRECTIONS:
        for order in (3, 4):
            for vec in (cu * u + cv * v, (cu * u + cv * v).float()):
                # float32 round-off of the coefficients (~1e-7) enters the cumulant to the 4th power
                tol = dict(rel=2e-6, abs=1e-6) if vec.dtype == torch.float32 else dict(rel=1e-12, abs=1e-13)
                assert model.projected_cumulant(vec, order) == pytest.approx(
                    model.projected_cumulant((cu, cv), order), **tol)


def test_projected_cumulant_rejects_bad_directions_and_orders():
    model = _model(d=8, coupling="sign")
    u, v, m = model.spike_vectors(torch.float64)
    with pytest.raises(ConfigError, match="unit norm"):
        model.projected_cumulant((0.6, 0.9), 4)
    with pytest.raises(ConfigError, match="unit norm"):
        model.projected_cumulant(0.5 * u, 4)
    with pytest.raises(ConfigError, match="span"):
        model.projected_cumulant(m, 4)
    with pytest.raises(ConfigError, match="span"):
        model.projected_cumulant((u + m) / math.sqrt(2), 3)
    with pytest.raises(ConfigError, match="order"):
        model.projected_cumulant((0.0, 1.0), 2)


# ----------------------------------------------------------------------------- Gaussian equivalent
@pytest.mark.parametrize("kw", [dict(coupling="sign", beta_m=1.2), dict(nu=TwoPoint(0.1), spikes="random")],
                         ids=["sign-mean", "two_point-random"])
def test_gaussian_equivalent_matches_moments_and_is_gaussian(kw):
    model = _model(**kw)
    ge = model.gaussian_equivalent()
    assert isinstance(ge, GaussianModel) and ge.d == D
    torch.testing.assert_close(ge.mean, model.mean())
    torch.testing.assert_close(ge.cov, model.covariance())
    x = ge.sample(N_MC, _gen(3), dtype=torch.float64)
    assert x.dtype == torch.float64 and x.shape == (N_MC, D)
    _assert_mean_cov(x, model.mean(), model.covariance())
    _, v, _ = model.spike_vectors(torch.float64)
    stats = _cumulant_stats(x @ v)
    for order in (3, 4):
        est, se = stats[order]
        assert abs(est) <= Z_MAX * se, (order, est)
    # while the MCM itself has a detectable higher-order cumulant along v
    x_mcm = model.sample(N_MC, _gen(3), dtype=torch.float64)
    order = 4 if model.law.symmetric else 3
    est, se = _cumulant_stats(x_mcm @ v)[order]
    assert abs(est) > 10 * se


def test_gaussian_model_validation_and_dtype():
    with pytest.raises(ConfigError, match="cov"):
        GaussianModel(torch.zeros(3), torch.eye(4))
    ge = GaussianModel(torch.zeros(3, dtype=torch.float64), torch.diag(torch.tensor([1.0, 0.0, 4.0])).double())
    x = ge.sample(1000, _gen(0), dtype=torch.float32)
    assert x.dtype == torch.float32
    assert float(x[:, 1].abs().max()) < 1e-6  # singular covariance handled
    assert torch.equal(ge.sample(10, _gen(1)), ge.sample(10, _gen(1)))


# ----------------------------------------------------------------------------- sampler
def test_same_seed_identical_samples_and_dtypes():
    model = _model(coupling="sign", q=0.5, beta_m=1.0, spikes="random")
    for dtype in (torch.float32, torch.float64):
        a = model.sample(257, _gen(4), dtype=dtype, return_latents=True)
        b = model.sample(257, _gen(4), dtype=dtype, return_latents=True)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert all(x.dtype == dtype for x in a)
        assert a[0].shape == (257, D) and a[1].shape == a[2].shape == (257,)
        # return_latents does not change the draw
        assert torch.equal(model.sample(257, _gen(4), dtype=dtype), a[0])
    assert not torch.equal(model.sample(257, _gen(4)), model.sample(257, _gen(5)))
    with pytest.raises(ConfigError, match="n"):
        model.sample(0, _gen(0))


@pytest.mark.parametrize("kw", [
    dict(beta_m=1.5, spikes="random", spike_seed=7),
    dict(coupling="sign", beta_u=2.0, beta_v=10.0),
    dict(nu=BernoulliGauss(0.2), beta_m=0.5),
], ids=["rademacher-mean-random", "sign", "bernoulli_gauss"])
def test_returned_latents_are_the_ones_used(kw):
    """x0 = beta_m m + sqrt(beta_u) lambda u + S(sqrt(beta_v) nu v + z): the residuals must be the
    independent N(0, 1) coordinates of z (mean 0, variance 1, uncorrelated with the latents)."""
    model = _model(**kw)
    x0, lam, nu = model.sample(N_MC, _gen(6), dtype=torch.float64, return_latents=True)
    u, v, m = model.spike_vectors(torch.float64)
    bu, bv, bm = model.beta_u, model.beta_v, model.beta_m
    z_u = x0 @ u - math.sqrt(bu) * lam
    z_v = math.sqrt(1 + bv) * (x0 @ v) - math.sqrt(bv) * nu
    z_m = x0 @ m - bm
    for z in (z_u, z_v, z_m):
        mean_se = 1 / math.sqrt(N_MC)
        assert abs(float(z.mean())) <= Z_MAX * mean_se
        assert abs(float(z.var()) - 1) <= Z_MAX * math.sqrt(2 / N_MC)
        for latent in (lam, nu):
            prod = z * latent
            assert abs(float(prod.mean())) <= Z_MAX * float(prod.std()) / math.sqrt(N_MC)
    assert abs(float((z_u * z_v).mean())) <= Z_MAX / math.sqrt(N_MC)
    # latents have the right laws: lambda ~ N(0, 1), nu with the law's variance 1
    assert abs(float(lam.var()) - 1) <= Z_MAX * math.sqrt(2 / N_MC)
    assert abs(float(nu.pow(2).mean()) - 1) <= Z_MAX * float(nu.pow(2).std()) / math.sqrt(N_MC)
    if model.latents.coupling == "sign":
        assert torch.equal(nu, torch.where(lam >= 0, 1.0, -1.0).double())


# ----------------------------------------------------------------------------- serialisation and validation
@pytest.mark.parametrize("kw", [
    dict(),
    dict(d=17, beta_u=1.0, beta_v=10.0, beta_m=0.5, coupling="sign", q=0.25, spikes="random", spike_seed=3),
    dict(nu=TwoPoint(0.2), coupling="independent"),
    dict(nu=BernoulliGauss(0.1), beta_u=0.0),
    dict(coupling="invisible"),
])
def test_to_dict_from_dict_round_trip(kw):
    model = _model(**kw)
    spec = model.to_dict()
    again = MixedCumulantModel.from_dict(json.loads(json.dumps(spec)))
    assert again == model
    assert again.to_dict() == spec
    assert torch.equal(again.sample(50, _gen(1)), model.sample(50, _gen(1)))


@pytest.mark.parametrize("kw, word", [
    (dict(beta_u=-1.0), "beta_u"),
    (dict(beta_v=-0.5), "beta_v"),
    (dict(beta_m=-2.0), "beta_m"),
    (dict(beta_u=float("nan")), "beta_u"),
    (dict(d=2), "d"),
    (dict(d=4.5), "d"),
    (dict(coupling="comonotone"), "coupling"),
    (dict(coupling="sign", q=1.5), "q"),
    (dict(coupling="sign", nu=Laplace()), "nu"),
    (dict(spikes="orthogonal"), "spikes"),
])
def test_invalid_config_raises_config_error_naming_parameter(kw, word):
    with pytest.raises(ConfigError, match=word):
        MixedCumulantModel.create(**kw)


def test_direct_constructor_validates_too():
    with pytest.raises(ConfigError, match="spikes"):
        MixedCumulantModel(d=5, spikes="qr")
    with pytest.raises(ConfigError, match="d"):
        MixedCumulantModel(d=1)
    model = MixedCumulantModel(d=5, latents=LatentPair(Rademacher(), "sign"))
    assert model.rho == pytest.approx(math.sqrt(2 / math.pi))
