"""Hermite expansion of the population loss (docs/theory/mcm.md section 5).

    E_y F_t(y) = sum_k (f_k / k!) E[He_k(y)],      f_k(t) = E_g[F_t(g) He_k(g)],  g ~ N(0, 1)

He_k are the probabilists' Hermite polynomials. For the MCM with alpha_m = 0, write
y = A lambda + B nu + sigma g with A = sqrt(beta_u) alpha_u, B = b alpha_v, sigma^2 = 1 - B^2. From the
generating function E exp(s y - s^2/2) = E[exp(s A lambda + s B nu)] exp(-s^2 B^2 / 2),

    E[He_k(y)] / k! = sum_{i + j + 2l = k} A^i B^(j+2l) E[lambda^i nu^j] (-1)^l / (i! j! 2^l l!)

a homogeneous polynomial of degree k in (alpha_u, alpha_v). Hence the degree-k part of
L(alpha) - L(0) is f_k E[He_k(y)]/k!, and the coefficient of alpha_u^i alpha_v^j is

    c_ij = f_(i+j) beta_u^(i/2) b^j sum_l E[lambda^i nu^(j-2l)] (-1)^l / (i! (j-2l)! 2^l l!)

which reproduces c_2 = beta_u f_2/2, c_3 = b^3 kappa_3 f_3/6, c_4 = b^4 kappa_4 f_4/24 and
c_11 = rho sqrt(beta_u) b f_2 of docs/theory/mcm.md section 5.

Accuracy (docs/theory/mcm.md section 10): f_k is integrated on composite Gauss-Legendre panels against N(0, 1),
graded towards y = 0 where F_t has its sharpest features at small t (the smoothed kink of relu / abs, the
steep Bayes-matched activation), to ~1e-13 against adaptive quadrature for t in [1e-4, 20]. Orders are
limited to k_max <= K_MAX_LIMIT; a coefficient c_ij smaller than its own rounding-error bound (parity zeros
multiplied by beta_u^(i/2)) is returned as exactly 0.
"""

from __future__ import annotations

import math

import torch

from easyhard._quadrature import gaussian_panels
from easyhard._validate import check_int_in
from easyhard.data.mcm import MixedCumulantModel
from easyhard.theory.loss import SingleNeuron


def hermite_he(k_max: int, x: torch.Tensor) -> torch.Tensor:
    """He_0(x) .. He_kmax(x) stacked on a new leading axis: shape (k_max + 1, *x.shape).

    Recursion He_(k+1)(x) = x He_k(x) - k He_(k-1)(x), He_0 = 1, He_1 = x.
    """
    out = [torch.ones_like(x), x]
    for k in range(1, k_max):
        out.append(x * out[k] - k * out[k - 1])
    return torch.stack(out[: k_max + 1])


#: highest Hermite order: the terms He_k(g) ~ sqrt(k!) cancel in f_k (absolute error ~ eps sqrt(k!) |F|, 1e-9 at
#: k = 16), and the truncation |g| <= 12 of the rule loses < 1e-15 relative of E g^(2k)
K_MAX_LIMIT = 16
#: panel edges of the f_k rule: 96 panels on [-12, 12] plus edges at +-2^-j (j < 15) towards y = 0
_EDGES = tuple(sign * 2.0**-j for j in range(15) for sign in (1.0, -1.0))
#: a sum's rounding error is taken as at most this many ulps of the sum of its absolute terms [choice: generous;
#: the genuine coefficients of the valid ranges sit far above it, docs/theory/mcm.md section 10]
_ROUNDING_ULPS = 1e4


def check_k_max(k_max: int, low: int = 1) -> int:
    """k_max, an integer in [low, K_MAX_LIMIT]; ConfigError naming ``k_max`` otherwise."""
    return check_int_in("k_max", k_max, low, K_MAX_LIMIT,
                        reason="Hermite orders whose coefficients stay accurate in float64")


def _f_rule() -> tuple[torch.Tensor, torch.Tensor]:
    return gaussian_panels(_EDGES, n_panels=96, per_panel=12, half_width=12.0)


def hermite_coefficients(neuron: SingleNeuron, k_max: int = 8) -> torch.Tensor:
    """f_k(t) = E_g[F_t(g) He_k(g)] for k = 0..k_max (float64, (k_max+1,)); k_max in [0, K_MAX_LIMIT].

    Composite Gauss-Legendre against N(0, 1) (module docstring), accurate to ~1e-13 absolute for k <= 8.
    """
    check_k_max(k_max, 0)
    g, w = _f_rule()
    return (hermite_he(k_max, g) * (neuron.f(g) * w)).sum(-1)


def _hermite_rounding(neuron: SingleNeuron, k_max: int) -> torch.Tensor:
    """Bound on the rounding error of each f_k: _ROUNDING_ULPS eps sum_i |w_i F(g_i) He_k(g_i)|."""
    g, w = _f_rule()
    magnitude = (hermite_he(k_max, g) * (neuron.f(g) * w)).abs().sum(-1)
    return _ROUNDING_ULPS * torch.finfo(torch.float64).eps * magnitude


def joint_moments(model: MixedCumulantModel, order: int, absolute: bool = False) -> torch.Tensor:
    """E[lambda^i nu^j] (``absolute``: E[|lambda|^i |nu|^j]) for i, j = 0..order from the joint latent grid:
    shape (order+1, order+1)."""
    lam, nu, w = model.latents.grid()
    if absolute:
        lam, nu = lam.abs(), nu.abs()
    lam_pow = torch.stack([lam**i for i in range(order + 1)])  # (order+1, L)
    nu_pow = torch.stack([nu**j for j in range(order + 1)])  # (order+1, N)
    return torch.einsum("il,ln,jn->ij", lam_pow, w, nu_pow)


def hermite_moment_polynomial(model: MixedCumulantModel, k: int, moments: torch.Tensor | None = None,
                              absolute: bool = False) -> torch.Tensor:
    """Monomial coefficients p_i of E[He_k(y)]/k! = sum_i p_i alpha_u^i alpha_v^(k-i)  (alpha_m = 0); shape (k+1,).

    ``absolute``: the same sums of absolute terms (``moments`` then holds E[|lambda|^i |nu|^j]), the scale of
    their rounding errors.
    """
    moments = joint_moments(model, k, absolute) if moments is None else moments
    b = model.v_signal
    coeffs = torch.zeros(k + 1, dtype=torch.float64)
    for i in range(k + 1):
        j_total = k - i
        acc = sum(float(moments[i, j_total - 2 * l]) * (1 if absolute else (-1) ** l)
                  / (math.factorial(j_total - 2 * l) * 2**l * math.factorial(l))
                  for l in range(j_total // 2 + 1))
        coeffs[i] = model.beta_u ** (i / 2) * b**j_total * acc / math.factorial(i)
    return coeffs


def loss_polynomial(model: MixedCumulantModel, neuron: SingleNeuron, k_max: int = 8) -> dict[tuple[int, int], float]:
    """Coefficients c_ij of L(alpha_u, alpha_v) - L(0, 0) = sum c_ij alpha_u^i alpha_v^j for 1 <= i + j <= k_max.

    k_max in [1, K_MAX_LIMIT] (checked first). Every c_ij is finite; one whose magnitude is below its
    rounding-error bound (f_k's bound times the absolute moment sum, plus |f_k| times the moments' bound)
    is exactly 0.0, so parity zeros stay zero at any beta_u of the valid range.
    """
    check_k_max(k_max)
    f, f_err = hermite_coefficients(neuron, k_max), _hermite_rounding(neuron, k_max)
    moments, abs_moments = joint_moments(model, k_max), joint_moments(model, k_max, absolute=True)
    eps = _ROUNDING_ULPS * torch.finfo(torch.float64).eps
    poly = {}
    for k in range(1, k_max + 1):
        p = hermite_moment_polynomial(model, k, moments)
        p_abs = hermite_moment_polynomial(model, k, abs_moments, absolute=True)
        for i in range(k + 1):
            c, bound = float(f[k] * p[i]), float(f_err[k] * p_abs[i] + eps * f[k].abs() * p_abs[i])
            poly[(i, k - i)] = c if abs(c) > bound else 0.0
    return poly
