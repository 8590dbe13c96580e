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
"""

from __future__ import annotations

import math

import torch

from easyhard._quadrature import gauss_hermite
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


def hermite_coefficients(neuron: SingleNeuron, k_max: int = 8, n_nodes: int = 200) -> torch.Tensor:
    """f_k(t) = E_g[F_t(g) He_k(g)] for k = 0..k_max by Gauss-Hermite quadrature (float64, (k_max+1,))."""
    g, w = gauss_hermite(n_nodes)
    return (hermite_he(k_max, g) * (neuron.f(g) * w)).sum(-1)


def joint_moments(model: MixedCumulantModel, order: int) -> torch.Tensor:
    """E[lambda^i nu^j] for i, j = 0..order from the joint latent grid: shape (order+1, order+1)."""
    lam, nu, w = model.latents.grid()
    lam_pow = torch.stack([lam**i for i in range(order + 1)])  # (order+1, L)
    nu_pow = torch.stack([nu**j for j in range(order + 1)])  # (order+1, N)
    return torch.einsum("il,ln,jn->ij", lam_pow, w, nu_pow)


def hermite_moment_polynomial(model: MixedCumulantModel, k: int, moments: torch.Tensor | None = None) -> torch.Tensor:
    """Monomial coefficients p_i of E[He_k(y)]/k! = sum_i p_i alpha_u^i alpha_v^(k-i)  (alpha_m = 0); shape (k+1,)."""
    moments = joint_moments(model, k) if moments is None else moments
    b = model.v_signal
    coeffs = torch.zeros(k + 1, dtype=torch.float64)
    for i in range(k + 1):
        j_total = k - i
        acc = sum(float(moments[i, j_total - 2 * l]) * (-1) ** l
                  / (math.factorial(j_total - 2 * l) * 2**l * math.factorial(l))
                  for l in range(j_total // 2 + 1))
        coeffs[i] = model.beta_u ** (i / 2) * b**j_total * acc / math.factorial(i)
    return coeffs


def loss_polynomial(model: MixedCumulantModel, neuron: SingleNeuron, k_max: int = 8) -> dict[tuple[int, int], float]:
    """Coefficients c_ij of L(alpha_u, alpha_v) - L(0, 0) = sum c_ij alpha_u^i alpha_v^j for 1 <= i + j <= k_max."""
    f = hermite_coefficients(neuron, k_max)
    moments = joint_moments(model, k_max)
    poly = {}
    for k in range(1, k_max + 1):
        p = hermite_moment_polynomial(model, k, moments)
        for i in range(k + 1):
            poly[(i, k - i)] = float(f[k] * p[i])
    return poly
