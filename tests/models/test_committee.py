"""Committee denoisers batched over an ensemble axis: forward pass, closed-form gradients, theory, SGD steps."""

import json
import math

import pytest
import torch

from easyhard import ConfigError
from easyhard.data import BernoulliGauss, MixedCumulantModel, Rademacher
from easyhard.models import Committee, plain_step, spherical_step
from easyhard.oracles import MCMBayesDenoiser, make_activation
from easyhard.theory import SingleNeuron, constant_term, overlap_loss

F64 = torch.float64
ACTIVATIONS = ["tanh", "erf", "sigmoid", "relu", "abs", "linear", "matched"]


def _activation(name):
    return make_activation(name, Rademacher(), beta_v=4.0, t=0.3) if name == "matched" else make_activation(name)


def _random_problem(model, E, B, seed, scale=0.6):
    """Generic (non-unit, untied o unrelated to w) params and inputs in float64."""
    gen = torch.Generator().manual_seed(seed)
    params = {"w": scale * torch.randn(E, model.K, model.d, generator=gen, dtype=F64)}
    if model.second_layer == "untied":
        params["o"] = torch.randn(E, model.K, model.d, generator=gen, dtype=F64)
    x0 = torch.randn(E, B, model.d, generator=gen, dtype=F64)
    x_t = 0.8 * x0 + 0.6 * torch.randn(E, B, model.d, generator=gen, dtype=F64)
    return params, x0, x_t, gen


def _reference_denoise(model, params, x_t, t):
    """Loop-by-loop transcription of the formula of docs/theory/mcm.md section 4.2, for one float t."""
    c = math.exp(-t) if model.skip is None else model.skip
    out = c * x_t.clone()
    E, B, _ = x_t.shape
    for e in range(E):
        for b in range(B):
            for k in range(model.K):
                w_k = params["w"][e, k]
                o_k = model.a_out * w_k if model.second_layer == "tied" else params["o"][e, k]
                out[e, b] += model.K ** (-model.omega) * o_k * model.activation(w_k @ x_t[e, b])
    return out


# ----- forward pass ------------------------------------------------------------------------------

@pytest.mark.parametrize("second_layer", ["tied", "untied"])
@pytest.mark.parametrize("skip", [None, 0.3])
def test_denoise_matches_loop_transcription_of_the_formula(second_layer, skip):
    model = Committee(d=5, K=3, activation=_activation("tanh"), second_layer=second_layer, omega=0.5,
                      a_out=1.7, skip=skip)
    params, x0, x_t, _ = _random_problem(model, E=2, B=4, seed=0)
    expected = _reference_denoise(model, params, x_t, 0.4)
    torch.testing.assert_close(model.denoise(params, x_t, 0.4), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.sample_loss(params, x0, x_t, 0.4), ((x0 - expected) ** 2).sum(-1),
                               rtol=1e-12, atol=1e-12)
    h = model.preactivations(params, x_t)
    torch.testing.assert_close(h, torch.einsum("ebd,ekd->ebk", x_t, params["w"]), rtol=1e-12, atol=1e-12)


def test_per_sample_time_and_skip_coefficient():
    model = Committee(d=4, K=2)
    params, _, x_t, _ = _random_problem(model, E=2, B=3, seed=1)
    t = torch.tensor([[0.1, 0.5, 1.2], [0.3, 0.3, 2.0]], dtype=F64)
    batched = model.denoise(params, x_t, t)
    for e in range(2):
        for b in range(3):
            single = model.denoise({"w": params["w"][e:e + 1]}, x_t[e:e + 1, b:b + 1], float(t[e, b]))
            torch.testing.assert_close(batched[e, b], single[0, 0], rtol=1e-12, atol=1e-12)
    # one time per member as an (E, 1) tensor
    per_member = model.denoise(params, x_t, torch.tensor([[0.1], [0.7]], dtype=F64))
    torch.testing.assert_close(per_member[1], model.denoise(params, x_t, 0.7)[1], rtol=1e-12, atol=1e-12)
    assert model.skip_coefficient(0.5) == pytest.approx(math.exp(-0.5))
    torch.testing.assert_close(model.skip_coefficient(t), torch.exp(-t))
    assert Committee(d=4, skip=0.25).skip_coefficient(t) == 0.25


# ----- closed-form gradients against autograd ----------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("second_layer", ["tied", "untied"])
@pytest.mark.parametrize("K", [1, 3])
def test_gradients_match_autograd(activation, second_layer, K):
    """Closed form == autograd of mean_b weight_b l_b for omega, t (float / per sample), weights and skip."""
    E, B, d = 2, 5, 6
    for omega in (0.5, 1.0):
        for skip in (None, 0.35):
            model = Committee(d=d, K=K, activation=_activation(activation), second_layer=second_layer,
                              omega=omega, a_out=-1.3, skip=skip)
            params, x0, x_t, gen = _random_problem(model, E, B, seed=K + 10 * len(activation))
            for t in (0.4, 0.05 + torch.rand(E, B, generator=gen, dtype=F64)):
                for weight in (None, torch.rand(E, B, generator=gen, dtype=F64)):
                    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
                    loss = model.sample_loss(leaves, x0, x_t, t)
                    loss = (loss if weight is None else weight * loss).mean(1).sum()
                    auto = torch.autograd.grad(loss, [leaves[k] for k in model.param_names])
                    closed = model.gradients(params, x0, x_t, t, weight=weight)
                    assert set(closed) == set(model.param_names)
                    for key, g_auto in zip(model.param_names, auto):
                        assert closed[key].shape == params[key].shape
                        torch.testing.assert_close(closed[key], g_auto, rtol=1e-10, atol=1e-12,
                                                   msg=f"{key} omega={omega} skip={skip} t={type(t)}")


def test_scalar_weight_scales_gradient():
    model = Committee(d=4, K=2, second_layer="untied")
    params, x0, x_t, _ = _random_problem(model, E=2, B=3, seed=3)
    g1, g3 = model.gradients(params, x0, x_t, 0.3), model.gradients(params, x0, x_t, 0.3, weight=3.0)
    for key in g1:
        torch.testing.assert_close(g3[key], 3 * g1[key], rtol=1e-12, atol=1e-14)


# ----- theory: the single neuron ----------------------------------------------------------------

@pytest.mark.parametrize("activation,coupling,beta_m,skip,a_out", [
    ("tanh", "independent", 0.0, None, 1.0),
    ("relu", "sign", 1.0, 0.3, -0.7),
    ("erf", "independent", 0.5, None, 2.0),
])
def test_single_neuron_monte_carlo_matches_theory(activation, coupling, beta_m, skip, a_out):
    """K = 1 tied: MC of sample_loss over MCM samples (d = 16) equals C_t + overlap_loss within 5 SE.

    Two members with different unit w share one batch call. Besides the raw average (SE ~ sqrt(d)), the
    paired estimator mean(l - ||x0 - c x_t||^2) (control variate with exact mean C_t) pins the w-dependent
    part E F_t(y) = overlap_loss to a much smaller SE.
    """
    t, n = 0.4, 100_000
    model = MixedCumulantModel.create(d=16, beta_u=3.0, beta_v=4.0, beta_m=beta_m, coupling=coupling)
    neuron = SingleNeuron(make_activation(activation), t=t, skip=skip, a_out=a_out)
    committee = Committee(d=16, K=1, activation=neuron.activation, a_out=a_out, skip=skip)
    u, v, m = model.spike_vectors(F64)
    rest = torch.zeros(16, dtype=F64)
    rest[-1] = 1.0  # orthogonal to the fixed spikes e_1, e_2, e_3
    alphas = [(0.6, 0.5, 0.3), (0.1, 0.9, 0.0)]
    w = torch.stack([au * u + av * v + am * m + math.sqrt(1 - au**2 - av**2 - am**2) * rest
                     for au, av, am in alphas])[:, None, :]
    gen = torch.Generator().manual_seed(7)
    x0 = model.sample(2 * n, gen, F64).reshape(2, n, 16)
    x_t = math.exp(-t) * x0 + math.sqrt(-math.expm1(-2 * t)) * torch.randn(2, n, 16, generator=gen, dtype=F64)
    loss = committee.sample_loss({"w": w}, x0, x_t, t)  # (2, n)
    base = ((x0 - neuron.c * x_t) ** 2).sum(-1)
    c_t = constant_term(model, neuron)
    exact = [overlap_loss(model, neuron, *al).item() for al in alphas]
    for e in range(2):
        exact_f = exact[e]
        mc, se = loss[e].mean().item(), loss[e].std().item() / math.sqrt(n)
        assert abs(mc - (c_t + exact_f)) < 5 * se, (e, mc, c_t + exact_f, se)
        diff = loss[e] - base[e]
        mc_f, se_f = diff.mean().item(), diff.std().item() / math.sqrt(n)
        assert abs(mc_f - exact_f) < 5 * se_f, (e, mc_f, exact_f, se_f)
        assert abs(mc_f - exact[1 - e]) > 5 * se_f  # sharp enough to tell the two overlap points apart


@pytest.mark.parametrize("law", [Rademacher(), BernoulliGauss(0.3)])
@pytest.mark.parametrize("beta_u", [0.0, 3.0])
def test_matched_neuron_at_v_is_bayes_optimal_along_v(law, beta_u):
    """Matched sigma at w = v, c_t = e^-t, a_out = 1: v.D(x_t) = v.E[x0 | x_t] = g_v(v.x_t).

    v.D = e^-t h_v + (g_v(h_v) - e^-t h_v) = g_v(h_v), and with independent latents the Bayes projection on v
    depends on h_v only, so the identity holds for any beta_u and any x_t. With beta_u = beta_m = 0 the Bayes
    denoiser is a P_perp x_t + a h_u u + a h_m m + g_v(h_v) v = a x_t + (g_v(h_v) - a h_v) v, i.e. the neuron
    itself: then the whole vector agrees, not only its v-projection.
    """
    t, d = 0.4, 16
    model = MixedCumulantModel.create(d=d, beta_u=beta_u, beta_v=5.0, nu=law, spikes="random", spike_seed=3)
    committee = Committee(d=d, K=1, activation=make_activation("matched", law, beta_v=5.0, t=t))
    u, v, m = model.spike_vectors(F64)
    gen = torch.Generator().manual_seed(0)
    x0 = model.sample(512, gen, F64)
    x_t = math.exp(-t) * x0 + math.sqrt(-math.expm1(-2 * t)) * torch.randn(512, d, generator=gen, dtype=F64)
    den = committee.denoise({"w": v.reshape(1, 1, d)}, x_t[None], t)[0]
    bayes = MCMBayesDenoiser(model)(x_t, t)
    torch.testing.assert_close(den @ v, bayes @ v, rtol=0, atol=1e-6)
    if beta_u == 0.0:
        torch.testing.assert_close(den, bayes, rtol=0, atol=1e-6)
    else:  # the neuron has no u-component beyond c_t h_u: the full vectors must differ along u
        assert float((den @ u - bayes @ u).abs().max()) > 1e-2


# ----- initialisation -----------------------------------------------------------------------------

@pytest.mark.parametrize("second_layer", ["tied", "untied"])
def test_init(second_layer):
    model = Committee(d=7, K=3, second_layer=second_layer, a_out=0.5)
    p = model.init(4, torch.Generator().manual_seed(0), dtype=F64)
    assert set(p) == set(model.param_names)
    assert p["w"].shape == (4, 3, 7) and p["w"].dtype == F64
    torch.testing.assert_close(torch.linalg.vector_norm(p["w"], dim=-1), torch.ones(4, 3, dtype=F64))
    same = model.init(4, torch.Generator().manual_seed(0), dtype=F64)
    other = model.init(4, torch.Generator().manual_seed(1), dtype=F64)
    for key in p:
        assert torch.equal(p[key], same[key])
        assert not torch.allclose(p[key], other[key])
    # members and neurons are distinct draws
    assert float((p["w"][0] - p["w"][1]).abs().max()) > 1e-3
    assert float((p["w"][0, 0] - p["w"][0, 1]).abs().max()) > 1e-3
    if second_layer == "untied":
        torch.testing.assert_close(p["o"], 0.5 * p["w"], rtol=0, atol=0)
        assert p["o"].data_ptr() != p["w"].data_ptr()


def test_init_is_isotropic():
    """Uniform on the sphere: E w w^T = I/d (checked on the second moment of many draws)."""
    d = 5
    w = Committee(d=d).init(20_000, torch.Generator().manual_seed(2), dtype=F64)["w"][:, 0]
    second = w.T @ w / w.shape[0]
    torch.testing.assert_close(second, torch.eye(d, dtype=F64) / d, rtol=0, atol=0.01)


# ----- SGD steps ----------------------------------------------------------------------------------

def _unit_rows(E, K, d, seed):
    g = torch.randn(E, K, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return g / torch.linalg.vector_norm(g, dim=-1, keepdim=True)


def test_spherical_step_keeps_unit_norm_and_ignores_radial_gradient():
    w = _unit_rows(3, 2, 6, 0)
    grad = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    new = spherical_step(w, grad, 0.7)
    torch.testing.assert_close(torch.linalg.vector_norm(new, dim=-1), torch.ones(3, 2, dtype=F64))
    assert float((new - w).abs().max()) > 1e-2
    radial = torch.tensor([3.0, -2.0, 0.5], dtype=F64).reshape(3, 1, 1) * w
    torch.testing.assert_close(spherical_step(w, radial, 0.7), w, rtol=0, atol=1e-14)


def test_spherical_step_first_order_is_minus_eta_g_perp():
    w = _unit_rows(2, 3, 8, 2)
    grad = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    g_perp = grad - (grad * w).sum(-1, keepdim=True) * w
    errors = []
    for eta in (1e-3, 1e-4):
        errors.append(float((spherical_step(w, grad, eta) - (w - eta * g_perp)).abs().max()))
    assert errors[0] < 1e-4 and errors[1] < 1e-6
    assert 50 < errors[0] / errors[1] < 200  # the remainder is second order in eta


def test_spherical_and_plain_step_per_member_eta():
    w = _unit_rows(3, 2, 5, 4)
    grad = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(5), dtype=F64)
    eta = torch.tensor([0.0, 0.1, 2.0], dtype=F64)
    for step in (spherical_step, plain_step):
        batched = step(w, grad, eta)
        torch.testing.assert_close(batched[0], w[0], rtol=0, atol=1e-15)
        for e in range(3):
            torch.testing.assert_close(batched[e], step(w[e:e + 1], grad[e:e + 1], float(eta[e]))[0],
                                       rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(plain_step(w, grad, 0.3), w - 0.3 * grad)


# ----- ensemble independence ----------------------------------------------------------------------

@pytest.mark.parametrize("second_layer", ["tied", "untied"])
def test_members_are_independent(second_layer):
    model = Committee(d=6, K=2, second_layer=second_layer, omega=0.5)
    params, x0, x_t, gen = _random_problem(model, E=3, B=4, seed=6)
    t = 0.1 + torch.rand(3, 4, generator=gen, dtype=F64)
    weight = torch.rand(3, 4, generator=gen, dtype=F64)
    den, grads = model.denoise(params, x_t, t), model.gradients(params, x0, x_t, t, weight)
    for e in range(3):
        sl = slice(e, e + 1)
        p_e = {k: v[sl] for k, v in params.items()}
        torch.testing.assert_close(den[sl], model.denoise(p_e, x_t[sl], t[sl]), rtol=1e-13, atol=1e-13)
        g_e = model.gradients(p_e, x0[sl], x_t[sl], t[sl], weight[sl])
        for key in grads:
            torch.testing.assert_close(grads[key][sl], g_e[key], rtol=1e-13, atol=1e-13)
    # changing members 1 and 2 leaves member 0 bit-for-bit unchanged
    changed = {k: torch.cat([v[:1], 5 * v[1:]]) for k, v in params.items()}
    x_changed = torch.cat([x_t[:1], -x_t[1:]])
    torch.testing.assert_close(model.denoise(changed, x_changed, t)[0], den[0], rtol=0, atol=1e-14)
    g_changed = model.gradients(changed, x0, x_changed, t, weight)
    for key in grads:
        torch.testing.assert_close(g_changed[key][0], grads[key][0], rtol=0, atol=1e-14)


# ----- overlaps and serialisation -------------------------------------------------------------------

def test_overlaps_are_normalised_projections():
    model = Committee(d=8, K=2)
    mcm = MixedCumulantModel.create(d=8, spikes="random", spike_seed=1)
    spikes = mcm.spike_vectors(F64)
    w = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    w[1, 0] = 4.0 * spikes[1]  # a scaled copy of v has overlaps (0, 1, 0)
    ov = model.overlaps({"w": w}, spikes)
    assert ov.shape == (3, 2, 3)
    torch.testing.assert_close(ov[1, 0], torch.tensor([0.0, 1.0, 0.0], dtype=F64), rtol=0, atol=1e-14)
    expected = torch.einsum("ekd,pd->ekp", w, spikes) / torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    torch.testing.assert_close(ov, expected)
    per_member = model.overlaps({"w": w}, spikes.expand(3, 3, 8))
    torch.testing.assert_close(per_member, expected)


def test_to_dict_is_json_serialisable():
    model = Committee(d=8, K=2, activation=make_activation("matched", Rademacher(), 5.0, 0.3), second_layer="untied",
                      omega=0.5, a_out=0.4, skip=0.9)
    spec = json.loads(json.dumps(model.to_dict()))
    assert spec == {"d": 8, "K": 2, "activation": model.activation.to_dict(), "second_layer": "untied",
                    "omega": 0.5, "a_out": 0.4, "skip": 0.9}
    assert spec["activation"]["name"] == "matched"
    assert Committee(d=3).to_dict()["skip"] is None


# ----- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    ({"d": 0}, "d"),
    ({"d": 4, "K": 0}, "K"),
    ({"d": 4, "K": 1.5}, "K"),
    ({"d": 4, "second_layer": "shared"}, "second_layer"),
    ({"d": 4, "omega": -0.5}, "omega"),
    ({"d": 4, "a_out": 0.0}, "a_out"),
    ({"d": 4, "a_out": float("nan")}, "a_out"),
    ({"d": 4, "skip": float("inf")}, "skip"),
    ({"d": 4, "activation": "tanh"}, "activation"),
])
def test_invalid_hyper_parameters(kwargs, name):
    with pytest.raises(ConfigError, match=name) as info:
        Committee(**kwargs)
    assert "\n" not in str(info.value)


def test_untied_allows_zero_a_out():
    p = Committee(d=3, second_layer="untied", a_out=0.0).init(2)
    assert float(p["o"].abs().max()) == 0.0


def test_invalid_shapes():
    model = Committee(d=4, K=2, second_layer="untied")
    params, x0, x_t, _ = _random_problem(model, E=2, B=3, seed=0)
    cases = [
        (lambda: model.init(0), "E"),
        (lambda: model.denoise({"w": params["w"]}, x_t, 0.3), "missing o"),
        (lambda: model.denoise({**params, "w": params["w"][:, :1]}, x_t, 0.3), r"params\['w'\]"),
        (lambda: model.denoise({**params, "o": params["o"][:1]}, x_t, 0.3), r"params\['o'\]"),
        (lambda: model.denoise(params, x_t[..., :3], 0.3), "x_t"),
        (lambda: model.denoise(params, x_t[:1], 0.3), "x_t"),
        (lambda: model.denoise(params, x_t, torch.ones(2)), "t must"),
        (lambda: model.denoise(params, x_t, torch.ones(2, 3, 1)), "t must"),
        (lambda: model.sample_loss(params, x0[:, :2], x_t, 0.3), "x0"),
        (lambda: model.gradients(params, x0, x_t, 0.3, weight=torch.ones(3, 3)), "weight"),
        (lambda: model.overlaps(params, torch.eye(3, 5)), "spikes"),
        (lambda: model.overlaps(params, torch.eye(3, 4).expand(3, 3, 4)), "spikes"),
        (lambda: spherical_step(params["w"], params["w"][:, :1], 0.1), "grad"),
        (lambda: spherical_step(params["w"][0], params["w"][0], 0.1), "w must"),
        (lambda: spherical_step(params["w"], params["w"], torch.ones(3)), "eta"),
        (lambda: plain_step(params["w"], params["w"], torch.ones(2, 1)), "eta"),
        (lambda: plain_step(params["w"], params["w"], float("nan")), "eta"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            fn()


@pytest.mark.parametrize("second_layer", ["tied", "untied"])
def test_loss_and_gradients_is_sample_loss_and_gradients(second_layer):
    """The one-pass method returns exactly what the two separate methods return."""
    net = Committee(d=6, K=2, second_layer=second_layer, omega=0.5)
    gen = torch.Generator().manual_seed(3)
    params = net.init(3, generator=gen, dtype=torch.float64)
    x0 = torch.randn((3, 4, 6), generator=gen, dtype=torch.float64)
    x_t = 0.7 * x0 + 0.5 * torch.randn((3, 4, 6), generator=gen, dtype=torch.float64)
    weight = torch.rand((3, 4), generator=gen, dtype=torch.float64)
    loss, grads = net.loss_and_gradients(params, x0, x_t, 0.4, weight)
    assert torch.equal(loss, net.sample_loss(params, x0, x_t, 0.4))
    for k, g in net.gradients(params, x0, x_t, 0.4, weight).items():
        assert torch.equal(grads[k], g)
