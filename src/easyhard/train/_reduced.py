"""Exact reduced simulation of single-neuron online spherical SGD (docs/theory/calibration.md, "Exact reduced simulation").

For the tied single neuron D(x_t) = c x_t + a_out w sigma(w.x_t) with |w| = 1, fresh samples and a
fixed time t, the law of (x0, xi) is invariant under rotations that fix the spikes (u, v, m). The
overlaps alpha = (w.u, w.v, w.m) therefore form a Markov chain, and one step needs only

- the spike components of z and xi (3 + 3 normals) and the latents (lambda, nu);
- the components along e, the unit vector of w orthogonal to the spikes (w = sum_p alpha_p s_p + rho e,
  rho = sqrt(1 - |alpha|^2)): 2 normals;
- for the remaining m_R = d - 4 coordinates only the 2x2 Wishart matrix
  (|z_R|^2, z_R.xi_R, |xi_R|^2) ~ W_2(m_R, I), drawn exactly by the Bartlett decomposition
  L = [[c_1, 0], [n_21, c_2]], c_1^2 ~ chi^2(m_R), c_2^2 ~ chi^2(m_R - 1), n_21 ~ N(0, 1), W = L L^T.

With x_t = a x0 + s xi, r = x0 - c x_t - a_out sigma(h) w and g = f_r r + f_x x_t
(f_r = -2 wt a_out sigma(h), f_x = -2 wt a_out (w.r) sigma'(h)), the R-block of the gradient is
g_R = A z_R + B xi_R with A = f_r (1 - c a) + f_x a, B = s (f_x - f_r c), so

    ||g_R||^2 = A^2 |z_R|^2 + 2 A B z_R.xi_R + B^2 |xi_R|^2,

and the spherical step w' = w - eta (g - (g.w) w), alpha' = (w'.s_p) / ||w'|| follows exactly, with
||w'||^2 = sum_p w'_p^2 + w'_e^2 + eta^2 ||g_R||^2 (w has no R-component). The cost per step does not
depend on d. The maths is that of the full kernel (:mod:`easyhard.train._kernel`) with K = 1, tied.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from easyhard.train._kernel import _activation, _raise_peak, track_recovery
from easyhard.train._rng import std_normal, uniform01


@numba.njit(inline="always", cache=True)
def _chi2(df: float, state: np.ndarray) -> float:
    """chi^2(df) = 2 Gamma(df/2) for df >= 2, by Marsaglia & Tsang's (2000) gamma method (exact)."""
    shape = 0.5 * df
    dd = shape - 1.0 / 3.0
    cc = 1.0 / math.sqrt(9.0 * dd)
    while True:
        x = std_normal(state)
        v = 1.0 + cc * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = uniform01(state)
        x2 = x * x
        if u < 1.0 - 0.0331 * x2 * x2 or math.log(u) < 0.5 * x2 + dd * (1.0 - v + math.log(v)):
            return 2.0 * dd * v


@numba.njit(inline="always", cache=True)
def reduced_step(al, zu, zv, zm, ze, xu, xv, xm, xe, lam, nu, zz, zx, xx, sbu, sbv, shrink, bm, a, s, c, wt, act,
                 act_par, a_out, lr) -> tuple[float, float]:
    """One exact spherical SGD step of the overlaps ``al`` (3,) in place; returns the sample loss wt ||r||^2 and
    the norm ||w - eta g_perp|| of the step before normalisation (the divergence rule's quantity,
    :mod:`easyhard.train.divergence`).

    (zu, zv, zm, ze), (xu, xv, xm, xe): components of z and xi along u, v, m and e;
    (zz, zx, xx) = (|z_R|^2, z_R.xi_R, |xi_R|^2).
    """
    x0u = zu + sbu * lam
    x0v = (1.0 - shrink) * (zv + sbv * nu)
    x0m = zm + bm
    tu, tv, tm, te = a * x0u + s * xu, a * x0v + s * xv, a * x0m + s * xm, a * ze + s * xe
    rho = math.sqrt(max(0.0, 1.0 - al[0] * al[0] - al[1] * al[1] - al[2] * al[2]))
    h = al[0] * tu + al[1] * tv + al[2] * tm + rho * te
    sg, dsg = _activation(act, h, act_par[0], act_par[1], act_par[2])
    o = a_out * sg
    ru, rv, rm = x0u - c * tu - o * al[0], x0v - c * tv - o * al[1], x0m - c * tm - o * al[2]
    re = ze - c * te - o * rho
    wr = al[0] * ru + al[1] * rv + al[2] * rm + rho * re
    fr = -2.0 * wt * o
    fx = -2.0 * wt * a_out * wr * dsg
    gw = fr * wr + fx * h
    one_ca = 1.0 - c * a
    coef_a = fr * one_ca + fx * a
    coef_b = s * (fx - fr * c)
    g_r2 = coef_a * coef_a * zz + 2.0 * coef_a * coef_b * zx + coef_b * coef_b * xx
    wu = al[0] - lr * (fr * ru + fx * tu - gw * al[0])
    wv = al[1] - lr * (fr * rv + fx * tv - gw * al[1])
    wm = al[2] - lr * (fr * rm + fx * tm - gw * al[2])
    we = rho - lr * (fr * re + fx * te - gw * rho)
    norm = math.sqrt(wu * wu + wv * wv + wm * wm + we * we + lr * lr * g_r2)
    inv = 1.0 / norm
    al[0], al[1], al[2] = wu * inv, wv * inv, wm * inv
    loss = wt * (ru * ru + rv * rv + rm * rm + re * re + one_ca * one_ca * zz - 2.0 * one_ca * c * s * zx
                 + c * c * s * s * xx)
    return loss, norm


@numba.njit(parallel=True, cache=True)
def run_reduced(alpha, states, coef, lam, nu, i0, i1, step0, a, s, c, wt, act, act_par, a_out, m_r, eta, loss_acc,
                peak, thr, persist, first_hit, pending, recovered):
    """Advance every member's overlaps alpha (E,3) through chunk steps ``i0 .. i1-1`` in place.

    states (E,4) member streams; coef (E,4) = (sqrt beta_u, sqrt beta_v, whitening shrink k, beta_m);
    lam, nu (E,C) latents; a, s, c, wt: a_t, sqrt(Delta_t), skip c_t and loss weight (fixed t);
    m_r = d - 4; eta (E,); loss_acc (E,) accumulates wt ||r||^2; peak (E,) keeps the largest pre-normalisation
    norm of a step (as in :func:`easyhard.train._kernel.run_steps`); first_hit, pending, recovered (E,3,T)
    as in :func:`easyhard.train._kernel.run_steps`.
    """
    E = alpha.shape[0]
    for e in numba.prange(E):
        st = states[e]
        al = alpha[e]
        for i in range(i0, i1):
            zu, zv, zm, ze = std_normal(st), std_normal(st), std_normal(st), std_normal(st)
            xu, xv, xm, xe = std_normal(st), std_normal(st), std_normal(st), std_normal(st)
            # the d - 4 remaining coordinates: Bartlett factor of W_2(m_r, I)
            c1 = math.sqrt(_chi2(m_r, st))
            c2 = math.sqrt(_chi2(m_r - 1.0, st))
            n21 = std_normal(st)
            loss, norm = reduced_step(al, zu, zv, zm, ze, xu, xv, xm, xe, lam[e, i], nu[e, i], c1 * c1, c1 * n21,
                                      n21 * n21 + c2 * c2, coef[e, 0], coef[e, 1], coef[e, 2], coef[e, 3], a, s, c,
                                      wt, act, act_par, a_out, eta[e])
            loss_acc[e] += loss
            _raise_peak(peak, e, norm)
            n = step0 + i + 1
            for p in range(3):
                track_recovery(abs(al[p]), n, thr, persist, first_hit[e, p], pending[e, p], recovered[e, p])


@numba.njit(parallel=True, cache=True)
def fill_reduced_draws(states, m_r, out):
    """The random numbers of :func:`run_reduced`, in its order, for ``out.shape[1]`` steps of each member:
    out (E, S, 11) = 8 normals (z, xi along u, v, m, e), chi^2(m_r), chi^2(m_r - 1), n_21. Lets the torch
    implementation consume the member streams of the numba kernel (tests compare the two)."""
    E, S = out.shape[0], out.shape[1]
    for e in numba.prange(E):
        st = states[e]
        for i in range(S):
            for j in range(8):
                out[e, i, j] = std_normal(st)
            out[e, i, 8] = _chi2(m_r, st)
            out[e, i, 9] = _chi2(m_r - 1.0, st)
            out[e, i, 10] = std_normal(st)


def reduced_step_torch(al, draws, lam, nu, coef, a, s, c, wt, activation, a_out, eta):
    """:func:`reduced_step` for all members at once (torch, CPU or CUDA); returns the sample losses (E,) and the
    pre-normalisation norms (E,) of the steps.

    al (E, 3) overlaps, updated in place; draws (E, 11) as in :func:`fill_reduced_draws`; lam, nu (E,);
    coef (E, 4) = (sqrt beta_u, sqrt beta_v, shrink, beta_m); eta (E,); ``activation`` an
    :class:`easyhard.activations.Activation` (sigma and sigma').
    """
    import torch

    z, xi = draws[:, 0:4], draws[:, 4:8]
    c1, c2, n21 = draws[:, 8].sqrt(), draws[:, 9].sqrt(), draws[:, 10]
    zz, zx, xx = c1 * c1, c1 * n21, n21 * n21 + c2 * c2
    sbu, sbv, shrink, bm = coef.unbind(1)
    x0 = torch.stack([z[:, 0] + sbu * lam, (1.0 - shrink) * (z[:, 1] + sbv * nu), z[:, 2] + bm], 1)  # (E, 3)
    t = a * x0 + s * xi[:, :3]
    te = a * z[:, 3] + s * xi[:, 3]
    rho = (1.0 - (al * al).sum(1)).clamp_min(0.0).sqrt()
    h = (al * t).sum(1) + rho * te
    o = a_out * activation(h)
    r = x0 - c * t - o[:, None] * al
    re = z[:, 3] - c * te - o * rho
    wr = (al * r).sum(1) + rho * re
    fr = -2.0 * wt * o
    fx = -2.0 * wt * a_out * wr * activation.derivative(h)
    gw = fr * wr + fx * h
    one_ca = 1.0 - c * a
    coef_a = fr * one_ca + fx * a
    coef_b = s * (fx - fr * c)
    g_r2 = coef_a * coef_a * zz + 2.0 * coef_a * coef_b * zx + coef_b * coef_b * xx
    w_sp = al - eta[:, None] * (fr[:, None] * r + fx[:, None] * t - gw[:, None] * al)
    w_e = rho - eta * (fr * re + fx * te - gw * rho)
    norm = ((w_sp * w_sp).sum(1) + w_e * w_e + eta * eta * g_r2).sqrt()
    al.copy_(w_sp / norm[:, None])
    return wt * ((r * r).sum(1) + re * re + one_ca * one_ca * zz - 2.0 * one_ca * c * s * zx + c * c * s * s * xx), norm
