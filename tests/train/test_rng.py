"""Per-member RNG (easyhard.train._rng): xoshiro256** + splitmix64 seeding + ziggurat normals.

Three kinds of checks:
* exact: splitmix64 / xoshiro256** against a pure-Python reference written here and against
  published test vectors, the ziggurat against a pure-Python re-implementation of the algorithm
  from the paper (same tables, its own bit decoding), the tables against their defining equations;
* reproducibility: determinism, stream continuity, independence of a member's row from the
  ensemble size, its position and the thread count, float32 = rounded float64;
* statistical (fixed seeds, hence deterministic): moments, KS, chi-square, tail probabilities and
  the conditional law of the tail, each at Z_MAX standard errors or p > P_MIN.
"""

import math

import numba
import numpy as np
import pytest
from scipy import stats

from easyhard import ConfigError
from easyhard.train import _rng
from easyhard.train._rng import (
    fill_normal,
    next_u64,
    seed_states,
    std_normal,
    std_normal_scalar,
    uniform01,
)

Z_MAX = 5.0
P_MIN = 1e-3
M64 = (1 << 64) - 1


# --- pure-Python references (Python ints masked to 64 bits) -------------------------------------


def ref_splitmix64(x: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        out.append(z ^ (z >> 31))
    return out


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & M64


class RefXoshiro:
    """xoshiro256** 1.0 as in Blackman & Vigna's reference C code."""

    def __init__(self, s: list[int]):
        self.s = [int(w) for w in s]

    def next(self) -> int:
        s = self.s
        result = (_rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def uniform(self) -> float:
        return (self.next() >> 11) * 2.0**-53


def ref_normal(g: RefXoshiro, paths: dict[str, int]) -> float:
    """Marsaglia-Tsang ziggurat from the paper, decoding the draw as documented in _rng."""
    x_edge, f = _rng._ZIG_X, _rng._ZIG_F
    r = _rng.ZIGGURAT_R
    while True:
        u = g.next()
        i = u & 255  # layer: bits 0-7
        signed = u - (1 << 64) if u >> 63 else u
        v = signed >> 11  # abscissa: bits 11-63 as a signed integer (floor shift)
        x = (v + 0.5) * (x_edge[i] / 2.0**52)
        inner = r if i == 0 else (0.0 if i == 1 else x_edge[i - 1])
        if abs(x) < inner:
            paths["fast"] += 1
            return x
        if i == 0:
            paths["tail"] += 1
            while True:
                a = -math.log(1.0 - g.uniform()) / r
                b = -math.log(1.0 - g.uniform())
                if 2.0 * b >= a * a:
                    return -(r + a) if x < 0 else r + a
        paths["wedge"] += 1
        if f[i] + g.uniform() * (f[i - 1] - f[i]) < math.exp(-0.5 * x * x):
            return x


# --- compiled helpers, used the way other modules' kernels use the API --------------------------


@numba.njit(cache=True)
def draw_u64(states, n):
    out = np.empty((states.shape[0], n), dtype=np.uint64)
    for e in range(states.shape[0]):
        st = states[e]
        for j in range(n):
            out[e, j] = next_u64(st)
    return out


@numba.njit(cache=True)
def draw_uniform(states, n):
    out = np.empty((states.shape[0], n))
    for e in range(states.shape[0]):
        st = states[e]
        for j in range(n):
            out[e, j] = uniform01(st)
    return out


@numba.njit(parallel=True, cache=True)
def external_kernel(states, out):
    """A foreign parallel kernel calling std_normal on states[e] inside prange."""
    for e in numba.prange(out.shape[0]):
        st = states[e]
        for j in range(out.shape[1]):
            out[e, j] = std_normal(st)


@numba.njit(parallel=True, cache=True)
def external_kernel_scalar(states, out):
    for e in numba.prange(out.shape[0]):
        s0, s1, s2, s3 = states[e, 0], states[e, 1], states[e, 2], states[e, 3]
        for j in range(out.shape[1]):
            out[e, j], s0, s1, s2, s3 = std_normal_scalar(s0, s1, s2, s3)
        states[e, 0], states[e, 1], states[e, 2], states[e, 3] = s0, s1, s2, s3


def normals(seeds, n: int, dtype=np.float64) -> np.ndarray:
    out = np.empty((len(seeds), n), dtype=dtype)
    fill_normal(seed_states(seeds), out)
    return out


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    """2**23 (~8.4e6) normals: 8 members x 2**20, flattened (rows are independent streams)."""
    return normals([101, 102, 103, 104, 105, 106, 107, 108], 2**20).ravel()


# --- exact: generators --------------------------------------------------------------------------


def test_splitmix64_seeding_matches_reference_and_published_values():
    # splitmix64 from state 0: published first outputs (Vigna's splitmix64.c).
    assert ref_splitmix64(0, 3) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    seeds = [0, 1, 2, 12345, 2**32 + 7, 2**63, M64]
    states = seed_states(seeds)
    assert states.dtype == np.uint64 and states.shape == (len(seeds), 4)
    assert states.flags.c_contiguous
    for row, s in zip(states, seeds):
        assert [int(w) for w in row] == ref_splitmix64(s, 4)
        assert [int(w) for w in _rng.splitmix64(s, 6)] == ref_splitmix64(s, 6)
    assert len({tuple(r) for r in states.tolist()}) == len(seeds)
    assert not np.any(np.all(states == 0, axis=1))
    # A row is a function of its own seed only.
    np.testing.assert_array_equal(seed_states([5, 9])[1], seed_states([9])[0])
    from_array = seed_states(np.array([9, 5], dtype=np.int64))
    np.testing.assert_array_equal(from_array[0], seed_states([9])[0])
    assert seed_states([]).shape == (0, 4)


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "3", None, True])
def test_seed_states_rejects_invalid_seeds(bad):
    with pytest.raises(ConfigError):
        seed_states([0, bad])


def test_xoshiro256starstar_matches_reference_and_published_values():
    # Published test vector (state words 1, 2, 3, 4), as in rand_xoshiro's tests.
    expected = [11520, 0, 1509978240, 1215971899390074240, 1216172134540287360,
                607988272756665600, 16172922978634559625, 8476171486693032832,
                10595114339597558777, 2904607092377533576]  # fmt: skip
    got = draw_u64(np.array([[1, 2, 3, 4]], dtype=np.uint64), 10)[0]
    assert [int(u) for u in got] == expected
    ref = RefXoshiro([1, 2, 3, 4])
    assert [ref.next() for _ in range(10)] == expected
    # Seeded states, several members, 1000 draws each; the state is advanced in place.
    seeds = [0, 7, M64]
    states = seed_states(seeds)
    got = draw_u64(states, 1000)
    for e, s in enumerate(seeds):
        ref = RefXoshiro(ref_splitmix64(s, 4))
        assert [int(u) for u in got[e]] == [ref.next() for _ in range(1000)]
        assert [int(w) for w in states[e]] == ref.s


def test_uniform01_is_top_53_bits():
    states = seed_states([3, 4])
    u = draw_uniform(states.copy(), 500)
    bits = draw_u64(states.copy(), 500)
    np.testing.assert_array_equal(u, (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53)
    assert u.min() >= 0.0 and u.max() < 1.0


def test_uniform01_ks():
    u = draw_uniform(seed_states([2024]), 200_000)[0]
    assert stats.kstest(u, "uniform").pvalue > P_MIN


# --- exact: ziggurat ----------------------------------------------------------------------------


def test_ziggurat_tables_satisfy_their_definition():
    n, r, v = _rng.ZIGGURAT_LAYERS, _rng.ZIGGURAT_R, _rng.ZIGGURAT_V
    x, k, w, f = _rng._ZIG_X, _rng._ZIG_K, _rng._ZIG_W, _rng._ZIG_F

    def phi(t):
        return np.exp(-0.5 * np.asarray(t) ** 2)

    tail = math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
    assert v == pytest.approx(0.00492867323399, rel=1e-10)  # the paper's constant
    assert r * phi(r) + tail == pytest.approx(v, rel=1e-14)  # base layer: rectangle + tail
    assert x[0] * phi(r) == pytest.approx(v, rel=1e-14)  # its pseudo-width
    assert x[n - 1] == r and np.all(np.diff(x[1:]) > 0)
    areas = x[2:] * (phi(x[1:-1]) - phi(x[2:]))  # layers 2..n-1
    np.testing.assert_allclose(areas, v, rtol=1e-12)
    assert x[1] * (1.0 - phi(x[1])) == pytest.approx(v, rel=1e-12)  # top layer closes the stack
    assert f[0] == 1.0
    np.testing.assert_allclose(f[1:], phi(x[1:]), rtol=1e-15)
    np.testing.assert_array_equal(w, x / 2.0**52)
    # k_i: grid points (m + 1/2) w_i with m < k_i are exactly those strictly inside the next edge
    # (x_{i-1}; r for the base; none for the top layer), and k_i ~ 2**52 x_{i-1} / x_i.
    inner = np.concatenate([[r, 0.0], x[1:-1]])
    assert k.dtype == np.int64 and k[1] == 0
    for i in (0, *range(2, n)):
        assert (k[i] - 0.5) * w[i] < inner[i] <= (k[i] + 0.5) * w[i], i
    np.testing.assert_allclose(k, 2.0**52 * inner / x, rtol=1e-15, atol=1)


def test_ziggurat_matches_pure_python_reference_bit_for_bit():
    seed, n = 77, 60_000
    got = normals([seed], n)[0]
    g = RefXoshiro(ref_splitmix64(seed, 4))
    paths = {"fast": 0, "wedge": 0, "tail": 0}
    ref = np.array([ref_normal(g, paths) for _ in range(n)])
    assert paths["wedge"] > 100 and paths["tail"] > 3  # every branch exercised
    fast = np.abs(ref) < _rng.ZIGGURAT_R
    np.testing.assert_array_equal(got[fast], ref[fast])
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0)  # tail: 1/r vs * (1/r)
    # Same number of 64-bit draws consumed.
    st = seed_states([seed])
    fill_normal(st, np.empty((1, n)))
    assert [int(w) for w in st[0]] == g.s


# --- reproducibility ----------------------------------------------------------------------------


def test_determinism_and_stream_continuity():
    seeds = [11, 12, 13]
    a = normals(seeds, 5000)
    np.testing.assert_array_equal(a, normals(seeds, 5000))
    states = seed_states(seeds)
    first, second = np.empty((3, 2000)), np.empty((3, 3000))
    fill_normal(states, first)
    fill_normal(states, second)
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1), a)


def test_member_row_independent_of_ensemble_position_and_threads():
    s, n = 424242, 4000
    alone = normals([s], n)[0]
    for seeds in ([s, 1, 2], [1, s, 2, 3, 4, 5, 6], [9] * 5 + [s]):
        got = normals(seeds, n)
        np.testing.assert_array_equal(got[seeds.index(s)], alone)
    seeds = list(range(17))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = normals(seeds, n)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = normals(seeds, n)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


def test_foreign_kernels_match_fill_normal():
    seeds = [5, 6, 7, 8, 9]
    ref_states = seed_states(seeds)
    ref = np.empty((5, 3000))
    fill_normal(ref_states, ref)
    for kernel in (external_kernel, external_kernel_scalar):
        states = seed_states(seeds)
        out = np.empty((5, 3000))
        kernel(states, out)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(states, ref_states)


def test_float32_is_rounded_float64():
    seeds = [3, 1, 4]
    a32 = normals(seeds, 20_000, np.float32)
    a64 = normals(seeds, 20_000, np.float64)
    assert a32.dtype == np.float32
    np.testing.assert_array_equal(a32, a64.astype(np.float32))


def test_fill_normal_rejects_mismatched_states():
    with pytest.raises(ValueError):
        fill_normal(seed_states([1, 2]), np.empty((3, 4)))


def test_different_seeds_uncorrelated():
    n = 2**16
    seeds = [0, 1, 2, 3, 1000, 2**32, 2**63, M64]
    z = normals(seeds, n)
    c = np.corrcoef(z)
    off = c[~np.eye(len(seeds), dtype=bool)]
    assert np.max(np.abs(off)) < Z_MAX / math.sqrt(n)
    # Lagged correlation within a stream (lag 1 and 2).
    for lag in (1, 2):
        r = np.mean(z[:, lag:] * z[:, :-lag], axis=1)
        assert np.max(np.abs(r)) < Z_MAX / math.sqrt(n)


# --- statistics of the normals ------------------------------------------------------------------


def test_moments_and_cumulants():
    n = 2_000_000
    x = normals([20240601], n)[0]
    d = x - x.mean()
    m2, m3, m4 = np.mean(d**2), np.mean(d**3), np.mean(d**4)
    # Cumulants of N(0, 1) and the standard errors of their estimates: 1, 2, 6, 24 over n.
    for value, target, var in ((x.mean(), 0.0, 1.0), (m2, 1.0, 2.0), (m3, 0.0, 6.0),
                               (m4 - 3 * m2**2, 0.0, 24.0)):  # fmt: skip
        assert abs(value - target) < Z_MAX * math.sqrt(var / n), (value, target)


def test_ks_against_normal():
    x = normals([31337], 200_000)[0]
    assert stats.kstest(x, "norm").pvalue > P_MIN


def test_chi_square_equiprobable_bins(big):
    edges = stats.norm.ppf(np.linspace(0.0, 1.0, 51))
    counts = np.histogram(big, bins=edges)[0]
    assert counts.sum() == big.size
    assert stats.chisquare(counts).pvalue > P_MIN


def test_chi_square_on_ziggurat_layer_edges(big):
    """Bins at the layer edges +-x_i: a wrong table entry or wedge test in any layer shows up."""
    x = _rng._ZIG_X
    pos = np.concatenate([[0.0], x[1:], [np.inf]])
    edges = np.concatenate([-pos[::-1], pos[1:]])
    counts = np.histogram(big, bins=edges)[0]
    expected = big.size * np.diff(stats.norm.cdf(edges))
    assert expected.min() > 500
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert stats.chi2.sf(chi2, len(counts) - 1) > P_MIN


def test_tail_probabilities(big):
    n = big.size
    assert n >= 4_000_000
    a = np.abs(big)
    for t in (3.5, _rng.ZIGGURAT_R, 4.5):
        p = 2 * stats.norm.sf(t)
        se = math.sqrt(p * (1 - p) / n)
        assert abs(np.mean(a > t) - p) < Z_MAX * se, t


def test_tail_conditional_law(big):
    """Given |x| > r, |x| has the normal tail law (Marsaglia's tail method, not just its mass)."""
    r = _rng.ZIGGURAT_R
    t = np.abs(big[np.abs(big) > r])
    assert t.size > 1000
    sf_r = stats.norm.sf(r)
    assert stats.kstest(t, lambda y: 1.0 - stats.norm.sf(y) / sf_r).pvalue > P_MIN
    # Both signs in the tail.
    tails = big[np.abs(big) > r]
    k = np.sum(tails > 0)
    assert abs(k - tails.size / 2) < Z_MAX * math.sqrt(tails.size) / 2
