"""The percentile bootstrap: coverage on a known law, seeded determinism, the documented draw order."""

from __future__ import annotations

import numpy as np
import pytest

import easyhard.metrics.bootstrap as boot_module
from easyhard._validate import ConfigError
from easyhard.metrics.bootstrap import bootstrap_mean, bootstrap_replicates, percentile_interval


def test_mean_interval_covers_the_true_mean_at_the_nominal_rate():
    """Exponential(1) samples of n = 80: the 90% interval of the mean covers 1 about 90% of the time, and the
    bootstrap SE is the standard error 1/sqrt(n) of the mean."""
    rng = np.random.default_rng(0)
    covered, reps, n = 0, 300, 80
    ses = []
    for r in range(reps):
        est = bootstrap_mean(rng.exponential(size=n), n_boot=400, level=0.9, seed=r)
        covered += est.interval[0] <= 1.0 <= est.interval[1]
        ses.append(est.se)
    assert 0.84 <= covered / reps <= 0.95  # percentile intervals under-cover slightly for a skewed law
    assert np.mean(ses) == pytest.approx(1 / np.sqrt(n), rel=0.1)


def test_replicates_are_seeded_and_independent_of_the_block_size(monkeypatch):
    values = np.random.default_rng(1).normal(size=37)
    stat = lambda idx: values[idx].mean(-1)  # noqa: E731  (works for (n,) and (B, n) indices)
    ref = bootstrap_replicates(stat, 37, n_boot=250, seed=[3, 2])
    assert np.array_equal(ref, bootstrap_replicates(stat, 37, n_boot=250, seed=[3, 2]))
    assert not np.array_equal(ref, bootstrap_replicates(stat, 37, n_boot=250, seed=[3, 1]))
    assert np.array_equal(ref, bootstrap_replicates(stat, 37, n_boot=250, seed=[3, 2], vectorized=True))
    monkeypatch.setattr(boot_module, "_BLOCK", 37 * 7)  # blocks of 7 replicates, the last one partial
    assert np.array_equal(ref, bootstrap_replicates(stat, 37, n_boot=250, seed=[3, 2], vectorized=True))
    assert np.array_equal(ref, bootstrap_replicates(stat, 37, n_boot=250, seed=[3, 2]))


def test_strata_are_drawn_replicate_by_replicate_in_order():
    """The documented stream order: replicate after replicate, stratum after stratum within one."""
    sizes = (3, 5, 2)
    rows = bootstrap_replicates(lambda *idx: np.concatenate(idx), sizes, n_boot=6, seed=9)
    rng = np.random.default_rng(9)
    expected = [np.concatenate([rng.integers(0, n, n) for n in sizes]) for _ in range(6)]
    assert np.array_equal(rows, np.array(expected))
    single = bootstrap_replicates(lambda idx: idx, 4, n_boot=5, seed=9)
    rng = np.random.default_rng(9)
    assert np.array_equal(single, np.array([rng.integers(0, 4, 4) for _ in range(5)]))


def test_percentile_interval_and_mean_estimate_against_numpy():
    reps = np.random.default_rng(2).normal(size=(500, 3))
    lo, hi = percentile_interval(reps, level=0.8)
    np.testing.assert_array_equal(lo, np.percentile(reps, 10, axis=0))
    np.testing.assert_array_equal(hi, np.percentile(reps, 90, axis=0))
    values = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    est = bootstrap_mean(values, n_boot=200, seed=4)
    replicates = bootstrap_replicates(lambda idx: values[idx].mean(), 5, n_boot=200, seed=4)
    assert est.value == 0.6 and est.boot_mean == replicates.mean() and est.se == replicates.std(ddof=1)
    assert est.interval == tuple(percentile_interval(replicates))


@pytest.mark.parametrize("call,text", [
    (lambda: percentile_interval(np.zeros(3), level=1.0), "level must lie in (0, 1)"),
    (lambda: bootstrap_replicates(np.mean, 5, n_boot=0), "n_boot"),
    (lambda: bootstrap_replicates(np.mean, (4, 0), n_boot=3), "bootstrap sample size"),
    (lambda: bootstrap_mean(np.zeros((2, 2))), "values must have shape (m,)"),
])
def test_bad_arguments_raise_one_line(call, text):
    with pytest.raises(ConfigError) as info:
        call()
    assert text in str(info.value) and "\n" not in str(info.value)
