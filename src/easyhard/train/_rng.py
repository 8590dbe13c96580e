"""Per-member random numbers for ensemble online SGD, compiled with numba.

Why this module exists
----------------------
The online-SGD engine runs ``E`` independent members (walkers) in one program. Each member must
own its random stream, seeded by its own integer seed, so that

* an ensemble run equals ``E`` separate runs bit for bit, and
* how much of member ``e``'s stream is consumed does not depend on ``E``, on the member's position
  in the ensemble, or on how the work is chunked across threads.

torch's CPU generator (one global mt19937 per generator, about 4 ns per normal, single-threaded)
is too slow for this and cannot be batched per member, hence this small numba implementation whose
per-member state is a row of a ``(E, 4)`` uint64 array that kernels advance in place.

Algorithms
----------
* Seeding: splitmix64 (Steele, Lea & Flood 2014; the variant recommended by S. Vigna for seeding
  xoshiro). The member's seed is the splitmix64 state; its first four outputs are the four words
  of the xoshiro256** state. splitmix64's output function is a bijection of its 64-bit counter, so
  distinct seeds give distinct states and the four words are never all zero.
* Uniform bits: xoshiro256** 1.0 (Blackman & Vigna, "Scrambled linear pseudorandom number
  generators", ACM TOMS 47(4), 2021), period 2**256 - 1.
* Uniform doubles: the top 53 bits of a draw times 2**-53, in [0, 1).
* Standard normals: the ziggurat of Marsaglia & Tsang, "The Ziggurat Method for Generating Random
  Variables", J. Stat. Softw. 5(8), 2000, with 256 layers, r = 3.6541528853610088. Unlike the
  original SHR3 version, the layer index (bits 0-7) and the signed abscissa (bits 11-63, a 53-bit
  two's-complement integer) come from disjoint bits of one 64-bit draw, so they are independent;
  the wedge test and the tail use fresh uniforms, and the tail beyond r is sampled by Marsaglia's
  exponential rejection method. The result is N(0, 1) in law up to the 2**-52 granularity of the
  abscissa grid (and the rounding of the tables).

Use from other kernels
----------------------
All kernels are ``@numba.njit(cache=True)``. ``next_u64``, ``uniform01`` and ``std_normal`` are
inlined into their callers (``inline="always"``) and may be called from other modules' ``@njit``
kernels, including inside ``numba.prange`` loops, with ``st = states[e]`` (a length-4 view,
advanced in place)::

    for e in numba.prange(E):
        st = states[e]
        for j in range(d):
            z[j] = std_normal(st)

A loop that can keep the state in four local scalars may use ``xoshiro_next`` /
``std_normal_scalar`` instead: same numbers, about 1.3-1.5x faster per normal as the state stays
in registers (this is what ``fill_normal`` does).

Caveat: numba's on-disk cache of a kernel in another module is keyed on that module's source
only. After editing this file, delete the ``__pycache__`` numba caches (``*.nbi``/``*.nbc``) of the
modules whose cached kernels inline it, or they keep the old generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numba
import numpy as np

from easyhard._validate import ConfigError

__all__ = [
    "ALGORITHM",
    "ZIGGURAT_LAYERS",
    "ZIGGURAT_R",
    "ZIGGURAT_V",
    "fill_normal",
    "next_u64",
    "seed_states",
    "splitmix64",
    "std_normal",
    "std_normal_scalar",
    "uniform01",
    "xoshiro_next",
]

ALGORITHM = (
    "per-member xoshiro256** (Blackman & Vigna 2021), state seeded by splitmix64 of the member's "
    "seed; uniform01 = (u >> 11) * 2**-53; std_normal = Marsaglia & Tsang (2000) ziggurat, 256 "
    "layers, r = 3.6541528853610088, layer index from bits 0-7 and signed abscissa from bits 11-63 "
    "of one draw, fresh uniforms for the wedge test, Marsaglia's exponential method for the tail"
)
"""One-line description of the generator, suitable for run metadata."""

_MASK64 = (1 << 64) - 1

# ---------------------------------------------------------------------------------------------
# splitmix64 seeding (numpy)
# ---------------------------------------------------------------------------------------------

_SM_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SM_M1 = np.uint64(0xBF58476D1CE4E5B9)
_SM_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64_next(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One splitmix64 step on a uint64 array of counters: returns (new counters, outputs)."""
    x = x + _SM_GAMMA  # uint64 arrays wrap modulo 2**64
    z = x
    z = (z ^ (z >> np.uint64(30))) * _SM_M1
    z = (z ^ (z >> np.uint64(27))) * _SM_M2
    return x, z ^ (z >> np.uint64(31))


def splitmix64(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of splitmix64 started from state ``seed`` (uint64 array)."""
    x = np.array([_as_seed(seed)], dtype=np.uint64)
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        x, z = _splitmix64_next(x)
        out[i] = z[0]
    return out


def _as_seed(s: object) -> int:
    """A seed as a Python int in [0, 2**64); raises ConfigError (a ValueError) otherwise."""
    try:
        ok = not isinstance(s, (bool, np.bool_)) and int(s) == s
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ConfigError(f"seeds must be integers (got {s!r})")
    s = int(s)
    if not 0 <= s <= _MASK64:
        raise ConfigError(f"seeds must lie in [0, 2**64) (got {s})")
    return s


def seed_states(seeds: Iterable[int]) -> np.ndarray:
    """xoshiro256** states for a sequence of ``E`` non-negative integer seeds.

    Returns a C-contiguous ``(E, 4)`` uint64 array whose row ``e`` holds the first four splitmix64
    outputs started from ``seeds[e]`` (Vigna's recommended seeding). Each row is a pure function
    of its own seed: ``seed_states([a, b])[1] == seed_states([b])[0]``. Distinct seeds in
    [0, 2**64) give distinct states, and no state is all zero. Raises ConfigError for a seed
    that is not an integer in [0, 2**64).
    """
    x = np.array([_as_seed(s) for s in seeds], dtype=np.uint64).reshape(-1)
    states = np.empty((x.shape[0], 4), dtype=np.uint64)
    for k in range(4):
        x, states[:, k] = _splitmix64_next(x)
    # Cannot happen (the output map is a bijection of the counter), kept as a cheap guard.
    if x.shape[0] and bool(np.any(np.all(states == 0, axis=1))):
        raise AssertionError("splitmix64 produced an all-zero xoshiro256** state")
    return states


# ---------------------------------------------------------------------------------------------
# xoshiro256** and uniforms (compiled, numba)
# ---------------------------------------------------------------------------------------------

# Typed constants: mixing uint64 with a Python int makes numba promote to float64.
_U5 = np.uint64(5)
_U7 = np.uint64(7)
_U9 = np.uint64(9)
_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U45 = np.uint64(45)
_U57 = np.uint64(64 - 7)
_U19 = np.uint64(64 - 45)
_U255 = np.uint64(255)
_TWO_M53 = 2.0**-53


@numba.njit(inline="always", cache=True)
def xoshiro_next(
    s0: np.uint64, s1: np.uint64, s2: np.uint64, s3: np.uint64
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64, np.uint64]:
    """xoshiro256** 1.0 on a state held in four scalars: returns ``(output, s0, s1, s2, s3)``."""
    x = s1 * _U5
    result = ((x << _U7) | (x >> _U57)) * _U9
    t = s1 << _U17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << _U45) | (s3 >> _U19)
    return result, s0, s1, s2, s3


@numba.njit(inline="always", cache=True)
def next_u64(state: np.ndarray) -> np.uint64:
    """Next 64-bit output of xoshiro256** 1.0; ``state`` (length-4 uint64) is advanced in place."""
    u, s0, s1, s2, s3 = xoshiro_next(state[0], state[1], state[2], state[3])
    state[0] = s0
    state[1] = s1
    state[2] = s2
    state[3] = s3
    return u


@numba.njit(inline="always", cache=True)
def _u01(u: np.uint64) -> float:
    """The top 53 bits of ``u`` as a double in [0, 1)."""
    return np.float64(np.int64(u >> _U11)) * _TWO_M53


@numba.njit(inline="always", cache=True)
def uniform01(state: np.ndarray) -> float:
    """Uniform double in [0, 1) on the 2**-53 grid: ``(next_u64 >> 11) * 2**-53``."""
    return _u01(next_u64(state))


# ---------------------------------------------------------------------------------------------
# Ziggurat tables (Marsaglia & Tsang 2000, normal case, 256 layers)
# ---------------------------------------------------------------------------------------------
#
# Notation (that of the paper's tables): f(x) = exp(-x**2 / 2), unnormalised. The area under f on
# x >= 0 is covered by 256 pieces of equal area V, each drawn with probability 1/256:
#   * layer 0, the base: the rectangle [0, R] x [0, f(R)] plus the tail {x > R, y < f(x)};
#     its area is V = R f(R) + int_R^inf f, and it is sampled as a box of pseudo-width
#     x_0 = V / f(R) > R: an abscissa below R is accepted at once, one beyond R means "tail".
#   * layer i = 1..255: the rectangle [0, x_i] x [f(x_i), f(x_{i-1})], with x_255 = R,
#     x_i decreasing as i decreases, and x_{i-1} = f^{-1}(f(x_i) + V / x_i) (equal areas).
#     Layer 1 is the top one, closed by the ordinate f_0 := 1 (the peak, at x = 0); its area
#     x_1 (1 - f(x_1)) equals V to ~1e-13 for the constant R, which is how R is defined.
# Each piece has area V and is picked with probability 1/256, then a point uniform in it is kept
# only if it lies under the curve, so kept abscissae have density proportional to f: N(0, 1).
# About 98.5% of draws take the fast path (the mean of x_{i-1} / x_i over the layers).
# In layer i >= 1 an abscissa |x| < x_{i-1} lies under the curve (fast path); otherwise
# |x| in [x_{i-1}, x_i] is kept if a uniform ordinate in [f(x_i), f(x_{i-1})] falls below f(x).
#
# A draw u gives the layer i = u & 255 (bits 0-7) and the abscissa from bits 11-63 read as a
# signed 53-bit integer v in [-2**52, 2**52): x = (v + 1/2) * w_i, w_i = x_i / 2**52, a grid
# symmetric about 0 that never hits 0 and is exact in float64. With m = |v + 1/2| - 1/2 (an integer
# in [0, 2**52)), the fast path is m < k_i where k_i is the smallest m with (m + 1/2) w_i >= x_{i-1}
# in float64 (about 2**52 x_{i-1} / x_i), so that it is exactly the test |x| < x_{i-1} on the grid
# (k_0 uses R for x_{-1}; k_1 = 0: the top layer always takes the wedge test).

ZIGGURAT_LAYERS = 256
ZIGGURAT_R = 3.6541528853610088
"""Right edge of the base rectangle (Marsaglia & Tsang 2000, 256-layer normal ziggurat)."""
ZIGGURAT_V = ZIGGURAT_R * math.exp(-0.5 * ZIGGURAT_R**2) + math.sqrt(math.pi / 2) * math.erfc(
    ZIGGURAT_R / math.sqrt(2)
)
"""Area of each layer, computed from R; the paper quotes v = 0.00492867323399."""

_SCALE = 2.0**52


def _ziggurat_tables(
    n: int = ZIGGURAT_LAYERS, r: float = ZIGGURAT_R, v: float = ZIGGURAT_V
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges x_i, fast-path bounds k_i (int64), abscissa scales w_i and ordinates f_i."""
    x = np.empty(n)
    x[n - 1] = r
    for i in range(n - 1, 1, -1):
        x[i - 1] = math.sqrt(-2.0 * math.log(v / x[i] + math.exp(-0.5 * x[i] * x[i])))
    x[0] = v / math.exp(-0.5 * r * r)  # pseudo-width of the base layer
    f = np.exp(-0.5 * x * x)
    f[0] = 1.0  # top of layer 1
    inner = np.empty(n)  # fast-path bound |x| < inner_i
    inner[0] = r
    inner[1] = 0.0
    inner[2:] = x[1:-1]
    w = x / _SCALE
    k = np.zeros(n, dtype=np.int64)
    for i in range(n):
        if inner[i] == 0.0:
            continue
        # Smallest m with (m + 1/2) w_i >= inner_i, evaluated in float64 exactly as the
        # sampler computes x, so the integer test m < k_i is the float test |x| < inner_i.
        m = math.ceil(_SCALE * inner[i] / x[i] - 0.5)
        while m > 0 and (m - 0.5) * w[i] >= inner[i]:
            m -= 1
        while (m + 0.5) * w[i] < inner[i]:
            m += 1
        k[i] = m
    return x, k, w, f


_ZIG_X, _ZIG_K, _ZIG_W, _ZIG_F = _ziggurat_tables()
_INV_R = 1.0 / ZIGGURAT_R


def _normal_slow_py(
    u: np.uint64, s0: np.uint64, s1: np.uint64, s2: np.uint64, s3: np.uint64
) -> tuple[float, np.uint64, np.uint64, np.uint64, np.uint64]:
    """Ziggurat from a draw ``u`` that may fail the fast test: wedge, tail and redraws.

    Returns ``(x, s0, s1, s2, s3)``. Called out of line from :func:`std_normal_scalar` (it takes
    scalars, so the call costs no reference counting), which keeps the inlined hot loop small.
    """
    while True:
        i = np.intp(u & _U255)  # bits 0-7: layer
        v = np.int64(u) >> 11  # bits 11-63: signed 53-bit abscissa (arithmetic shift)
        m = v ^ (v >> 63)  # |v + 1/2| - 1/2
        x = (np.float64(v) + 0.5) * _ZIG_W[i]
        if m < _ZIG_K[i]:
            return x, s0, s1, s2, s3
        if i == 0:
            # Tail |x| > R, Marsaglia's method: a = -log(U1) / R, b = -log(U2), accept when
            # 2b >= a**2, return R + a. 1 - U lies in (0, 1], so the logs are finite.
            while True:
                u1, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
                u2, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
                a = -math.log(1.0 - _u01(u1)) * _INV_R
                b = -math.log(1.0 - _u01(u2))
                if b + b >= a * a:
                    break
            x = ZIGGURAT_R + a
            return (-x if v < 0 else x), s0, s1, s2, s3
        # Wedge of layer i: a fresh uniform ordinate in [f(x_i), f(x_{i-1})] against f(x).
        uy, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
        y = _ZIG_F[i] + _u01(uy) * (_ZIG_F[i - 1] - _ZIG_F[i])
        if y < math.exp(-0.5 * x * x):
            return x, s0, s1, s2, s3
        u, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)


_normal_slow_call = numba.njit(cache=True)(_normal_slow_py)


@numba.njit(inline="always", cache=True)
def std_normal_scalar(
    s0: np.uint64, s1: np.uint64, s2: np.uint64, s3: np.uint64
) -> tuple[float, np.uint64, np.uint64, np.uint64, np.uint64]:
    """:func:`std_normal` on a state held in four scalars: returns ``(x, s0, s1, s2, s3)``.

    Same numbers as :func:`std_normal`; faster in a loop that keeps the state in locals (it
    stays in registers instead of making a round trip through memory per normal).
    """
    u, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
    i = np.intp(u & _U255)
    v = np.int64(u) >> 11
    if (v ^ (v >> 63)) < _ZIG_K[i]:
        return (np.float64(v) + 0.5) * _ZIG_W[i], s0, s1, s2, s3
    return _normal_slow_call(u, s0, s1, s2, s3)


@numba.njit(inline="always", cache=True)
def std_normal(state: np.ndarray) -> float:
    """One standard normal N(0, 1) by the Marsaglia-Tsang (2000) ziggurat, 256 layers.

    ``state`` is a length-4 uint64 xoshiro256** state (e.g. ``states[e]``), advanced in place.
    About 98.5% of calls consume exactly one 64-bit draw; the rest (wedge or tail) a few more.
    Same stream as :func:`std_normal_scalar`.
    """
    x, s0, s1, s2, s3 = std_normal_scalar(state[0], state[1], state[2], state[3])
    state[0] = s0
    state[1] = s1
    state[2] = s2
    state[3] = s3
    return x


@numba.njit(parallel=True, cache=True)
def fill_normal(states: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out[e, :]`` in order with ``std_normal(states[e])``, in parallel over members.

    (Computed with :func:`std_normal_scalar`, the same numbers with the state in registers.)

    ``states``: ``(E, 4)`` uint64, advanced in place. ``out``: ``(E, N)`` float32 or float64,
    C-contiguous. Row ``e`` depends only on ``states[e]``, so the result does not depend on
    ``E``, on the member's position or on the thread count; a float32 row is the float64 row
    rounded to nearest.
    """
    n_members, n = out.shape
    if states.shape[0] != n_members or states.shape[1] != 4:
        raise ValueError("fill_normal: states must have shape (E, 4) with E = out.shape[0]")
    for e in numba.prange(n_members):
        s0 = states[e, 0]
        s1 = states[e, 1]
        s2 = states[e, 2]
        s3 = states[e, 3]
        row = out[e]
        for j in range(n):
            x, s0, s1, s2, s3 = std_normal_scalar(s0, s1, s2, s3)
            row[j] = x
        states[e, 0] = s0
        states[e, 1] = s1
        states[e, 2] = s2
        states[e, 3] = s3
