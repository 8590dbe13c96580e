"""Fused CPU kernel of online SGD for the committee denoiser (numba, parallel over members).

One call advances every member of the ensemble through the steps ``i0 .. i1-1`` of a chunk. The
maths is that of :class:`easyhard.models.Committee` and :func:`easyhard.models.spherical_step`
(docs/theory/mcm.md sections 4.2, 4.4 and 8.1), written out element by element so that one step of one
member costs O(K d) arithmetic and 2d normal draws, with no per-step interpreter overhead. The
torch engine (:mod:`easyhard.train.online.torch_engine`) runs the same maths through ``Committee.gradients``
and consumes the same random numbers; the tests compare the two.

Per step and member (online mode; in finite-n mode x0 = X[idx] and only xi is drawn):

    z ~ N(0, I_d), xi ~ N(0, I_d)                           (drawn in this order from the member's stream)
    x0 = z + beta_m m + sqrt(beta_u) lambda u + (sqrt(beta_v) nu (1 - k) - k v.z) v      (= S(...) of docs/theory/mcm.md section 1.1)
    x_t = a x0 + s xi,  h_k = w_k . x_t,  r = x0 - c x_t - kappa sum_k o_k sigma(h_k)     (o_k = a_out w_k if tied)
    grad w_k = -2 weight kappa [a_out sigma(h_k) r + (o_k . r) sigma'(h_k) x_t]   (tied: o_k . r = a_out w_k . r)
    grad o_k = -2 weight kappa sigma(h_k) r                                        (untied)
    w_k <- (w_k - eta g_perp)/||w_k - eta g_perp||,  g_perp = g - (g.w_k) w_k       (spherical; plain: w_k - eta g)
"""

from __future__ import annotations

import math

import numba
import numpy as np

from easyhard.train._rng import std_normal_scalar

#: activation codes understood by the kernel (the matched one is the Rademacher closed form)
ACTIVATION_CODES = {"tanh": 0, "erf": 1, "sigmoid": 2, "relu": 3, "abs": 4, "linear": 5, "matched": 6}


@numba.njit(inline="always", cache=True)
def _activation(code: int, h: float, p0: float, p1: float, p2: float) -> tuple[float, float]:
    """(sigma(h), sigma'(h)) for the activation ``code``; matched: c1 h + c2 tanh(c3 h)."""
    if code == 0:  # tanh from one exp, 3x faster than libm's: absolute error < 4e-16 (series below 1e-4)
        ah = abs(h)
        if ah < 1e-4:
            s = h * (1.0 - h * h / 3.0)
        else:
            e = math.exp(-2.0 * ah)
            s = math.copysign((1.0 - e) / (1.0 + e), h)
        return s, 1.0 - s * s
    if code == 1:
        return math.erf(h), 1.1283791670955126 * math.exp(-h * h)
    if code == 2:
        e = 1.0 / (1.0 + math.exp(-h))
        return e - 0.5, e * (1.0 - e)
    if code == 3:
        return (h, 1.0) if h > 0.0 else (0.0, 0.0)
    if code == 4:
        return abs(h), (1.0 if h > 0.0 else (-1.0 if h < 0.0 else 0.0))
    if code == 5:
        return h, 1.0
    th = math.tanh(p2 * h)
    return p0 * h + p1 * th, p0 + p1 * p2 * (1.0 - th * th)


@numba.njit(inline="always", cache=True)
def track_recovery(al: float, n: int, thr, persist: float, first_hit, pending, recovered) -> None:
    """Update first passage and persistent recovery of one overlap after step ``n`` (in place, arrays (T,)).

    first_hit[t]: first step with |alpha| >= thr[t]. A candidate tau (a step with |alpha| >= thr) is
    confirmed as recovered[t] = tau if |alpha| >= thr[t] still holds at step tau + floor(persist tau);
    otherwise it is dropped and the next crossing becomes the candidate (issue 5, item 3).
    """
    for ti in range(thr.shape[0]):
        above = al >= thr[ti]
        if above and first_hit[ti] < 0:
            first_hit[ti] = n
        if recovered[ti] < 0:
            if pending[ti] < 0 and above:
                pending[ti] = n
            if pending[ti] >= 0 and n >= pending[ti] + int(math.floor(persist * pending[ti])):
                if above:
                    recovered[ti] = pending[ti]
                else:
                    pending[ti] = -1


@numba.njit(inline="always", cache=True)
def _raise_peak(peak, e: int, norm: float) -> None:
    """peak[e] = max(peak[e], norm), with NaN kept once it appears (NaN <= x is False)."""
    if not norm <= peak[e]:
        if not math.isnan(peak[e]):
            peak[e] = norm


#: reassociation lets LLVM vectorise the dot products; no-NaN/no-inf flags stay off so divergence is seen
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def run_steps(W, O, states, P, axes, coef, lam, nu, X, idx, tco, i0, i1, step0, act, act_par, kappa, a_out, tied,
              spherical, finite, eta, loss_acc, peak, thr, persist, first_hit, pending, recovered):
    """Advance all members through chunk steps ``i0 .. i1-1`` in place.

    W (E,K,d) first-layer weights; O (E,K,d) untied second layer (ignored when tied);
    states (E,4) uint64 member streams; P (E,3,d) spikes (u, v, m); axes (E,3) int64: the
    coordinates of u, v, m when they are coordinate vectors, else -1 (general path); coef (E,4) =
    (sqrt(beta_u), sqrt(beta_v), whitening shrink k, beta_m); lam, nu (E,C) latents of the chunk;
    X (E,n,d) training set and idx (E,C) sample indices (finite mode); tco (E,C,4) per-step
    (a_t, s_t, c_t, loss weight); step0: global step of chunk position 0; eta (E,) step sizes;
    loss_acc (E,) accumulates weight * ||r||^2; peak (E,) keeps the largest norm of any weight vector after a
    step, before normalisation (||w_k - eta g_perp|| when spherical, else ||w_k||; ||o_k|| when untied: the
    quantity of the divergence rule, :mod:`easyhard.train.divergence`; NaN once one is NaN); first_hit,
    pending, recovered (E,K,3,T) int64: first global step with |w_k . spike| / ||w_k|| >= thr[T], the
    candidate and the confirmed recovery step of :func:`track_recovery` (-1: none yet).
    """
    E, K, d = W.shape
    for e in numba.prange(E):
        s0, s1, s2, s3 = states[e, 0], states[e, 1], states[e, 2], states[e, 3]
        We, Oe = W[e], O[e]
        x0 = np.empty(d)
        xt = np.empty(d)
        r = np.empty(d)
        h = np.empty(K)
        sg = np.empty(K)
        dsg = np.empty(K)
        sbu, sbv, shrink, bm = coef[e, 0], coef[e, 1], coef[e, 2], coef[e, 3]
        u, v, m = P[e, 0], P[e, 1], P[e, 2]
        axis = axes[e, 0] >= 0
        iu, iv, im = axes[e, 0], axes[e, 1], axes[e, 2]
        lr = eta[e]
        for i in range(i0, i1):
            a, s, c, wt = tco[e, i, 0], tco[e, i, 1], tco[e, i, 2], tco[e, i, 3]
            # the member's draws, z (online only) then xi, in tight loops of their own
            if not finite:
                for j in range(d):
                    x0[j], s0, s1, s2, s3 = std_normal_scalar(s0, s1, s2, s3)
            for j in range(d):
                xt[j], s0, s1, s2, s3 = std_normal_scalar(s0, s1, s2, s3)
            if finite:
                row = X[e, idx[e, i]]
                for j in range(d):
                    x0[j] = row[j]
            elif axis:  # spikes are coordinate vectors: the rank-three part touches three entries
                cu = sbu * lam[e, i]
                cv = sbv * nu[e, i] * (1.0 - shrink) - shrink * x0[iv]
                x0[iu] += cu
                x0[iv] += cv
                x0[im] += bm
            else:
                vz = 0.0
                for j in range(d):
                    vz += v[j] * x0[j]
                cu = sbu * lam[e, i]
                cv = sbv * nu[e, i] * (1.0 - shrink) - shrink * vz
                for j in range(d):
                    x0[j] += cu * u[j] + cv * v[j] + bm * m[j]
            for j in range(d):
                xt[j] = a * x0[j] + s * xt[j]
            # forward pass: h_k = w_k . x_t ; r = x0 - c x_t - kappa sum_k o_k sigma(h_k)
            for k in range(K):
                acc = 0.0
                for j in range(d):
                    acc += We[k, j] * xt[j]
                h[k] = acc
                sg[k], dsg[k] = _activation(act, acc, act_par[0], act_par[1], act_par[2])
                sg[k] *= kappa * a_out if tied else kappa  # now the output weight of o_k (or w_k)
            for j in range(d):
                r[j] = x0[j] - c * xt[j]
            for k in range(K):
                f = sg[k]
                Vk = We[k] if tied else Oe[k]
                for j in range(d):
                    r[j] -= f * Vk[j]
            l2 = 0.0
            for j in range(d):
                l2 += r[j] * r[j]
            loss_acc[e] += wt * l2
            # grad w_k = fr r + fx x_t, with (tied) fr = -2 wt kappa a_out sigma_k, fx = -2 wt kappa (o_k.r) sigma'_k;
            # g.w_k = fr (w_k.r) + fx h_k needs no extra pass over d
            for k in range(K):
                wr = 0.0
                for j in range(d):
                    wr += We[k, j] * r[j]
                if tied:
                    orr = a_out * wr
                else:
                    orr = 0.0
                    for j in range(d):
                        orr += Oe[k, j] * r[j]
                fr = -2.0 * wt * sg[k] if tied else 0.0
                fx = -2.0 * wt * kappa * orr * dsg[k]
                if not tied:
                    fo = 2.0 * lr * wt * sg[k]
                    o2 = 0.0
                    for j in range(d):
                        on = Oe[k, j] + fo * r[j]
                        Oe[k, j] = on
                        o2 += on * on
                    _raise_peak(peak, e, math.sqrt(o2))
                gw = fr * wr + fx * h[k] if spherical else 0.0
                # update, then |alpha| = |spike . w_k| / ||w_k|| for the first-passage times
                n2 = 0.0
                for j in range(d):
                    wn = We[k, j] - lr * (fr * r[j] + fx * xt[j] - gw * We[k, j])
                    We[k, j] = wn
                    n2 += wn * wn
                if axis:
                    pu, pv, pm = We[k, iu], We[k, iv], We[k, im]
                else:
                    pu = 0.0
                    pv = 0.0
                    pm = 0.0
                    for j in range(d):
                        pu += u[j] * We[k, j]
                        pv += v[j] * We[k, j]
                        pm += m[j] * We[k, j]
                norm = math.sqrt(n2)
                _raise_peak(peak, e, norm)
                inv = 1.0 / norm
                if spherical:
                    for j in range(d):
                        We[k, j] *= inv
                n = step0 + i + 1
                track_recovery(abs(pu) * inv, n, thr, persist, first_hit[e, k, 0], pending[e, k, 0], recovered[e, k, 0])
                track_recovery(abs(pv) * inv, n, thr, persist, first_hit[e, k, 1], pending[e, k, 1], recovered[e, k, 1])
                track_recovery(abs(pm) * inv, n, thr, persist, first_hit[e, k, 2], pending[e, k, 2], recovered[e, k, 2])
        states[e, 0], states[e, 1], states[e, 2], states[e, 3] = s0, s1, s2, s3
