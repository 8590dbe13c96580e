"""Nearest neighbours (chunked = unchunked = all pairs, exactly), the memorisation fraction, similarities with a
member axis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.metrics.memorization import (
    copies_from_distances, denoiser_similarity, distance_ratio, memorization_fraction, nearest_neighbours,
    nearest_similarity, paired_similarity, standardize, threshold_label)


def _gauss(n, d, seed):
    return torch.randn((n, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_chunked_and_unchunked_neighbours_agree_exactly(metric):
    train, samples = _gauss(700, 24, 0), _gauss(90, 24, 1)
    train[5] = train[600]  # an exact tie: the smaller index must win in every chunking
    samples[3] = train[600] + 1e-3
    ref_d, ref_i = nearest_neighbours(samples, train, k=3, metric=metric, chunk=10_000)
    for chunk in (1, 7, 64, 699):
        d, i = nearest_neighbours(samples, train, k=3, metric=metric, chunk=chunk)
        assert torch.equal(i, ref_i) and torch.equal(d, ref_d)
    assert ref_i[3, 0] == 5 and ref_i[3, 1] == 600
    # brute force
    if metric == "l2":
        full = torch.cdist(samples, train, compute_mode="donot_use_mm_for_euclid_dist")
        np.testing.assert_allclose(ref_d.numpy(), full.sort(1).values[:, :3].numpy(), rtol=1e-12)
    else:
        sims = standardize(samples) @ standardize(train).T
        np.testing.assert_allclose(ref_d.numpy(), sims.sort(1, descending=True).values[:, :3].numpy(), atol=1e-12)


def test_memorization_fraction_copies_and_fresh_samples():
    train = _gauss(400, 30, 2)
    copies = train[:100] + 1e-3 * _gauss(100, 30, 3)
    fresh = _gauss(300, 30, 4)
    assert memorization_fraction(copies, train).value == 1.0
    assert memorization_fraction(fresh, train).value < 0.02
    mixed = memorization_fraction(torch.cat([copies, fresh]), train, n_boot=500)
    assert mixed.value == pytest.approx(0.25, abs=0.01) and mixed.interval[0] < 0.25 < mixed.interval[1]


def test_bootstrap_interval_covers_the_true_fraction_at_the_nominal_rate():
    """Samples are copies with probability p = 0.3, fresh otherwise: the 95% interval covers p ~95% of the time."""
    train = _gauss(300, 20, 5)
    rng = np.random.default_rng(0)
    covered, reps = 0, 120
    for r in range(reps):
        n = 150
        is_copy = torch.from_numpy(rng.random(n) < 0.3)
        base = train[torch.from_numpy(rng.integers(0, len(train), n))] + 1e-3 * _gauss(n, 20, 100 + r)
        samples = torch.where(is_copy[:, None], base, _gauss(n, 20, 1000 + r))
        lo, hi = memorization_fraction(samples, train, n_boot=400, seed=r).interval
        covered += lo <= 0.3 <= hi
    assert 0.85 <= covered / reps <= 1.0


def test_errors_are_one_line():
    with pytest.raises(ConfigError, match="threshold"):
        memorization_fraction(_gauss(5, 3, 0), _gauss(5, 3, 1), threshold=1.5)
    with pytest.raises(ConfigError, match="same dimension"):
        nearest_neighbours(_gauss(5, 3, 0), _gauss(5, 4, 1))
    with pytest.raises(ConfigError, match="metric"):
        nearest_neighbours(_gauss(5, 3, 0), _gauss(5, 3, 1), metric="l1")


def test_split_similarity_sees_samples_that_copy_their_own_split():
    own, other = _gauss(300, 40, 10), _gauss(300, 40, 11)
    copies = own[:50] + 0.05 * _gauss(50, 40, 12)
    from easyhard.metrics.memorization import paired_similarity, split_similarity

    biased = split_similarity(copies, own, other)
    assert biased["own"] > 0.99 and biased["gap"] > 0.5
    fresh = split_similarity(_gauss(50, 40, 13), own, other)
    assert abs(fresh["gap"]) < 0.05  # a fresh sample is no closer to one split than to the other
    same = paired_similarity(copies, copies)
    assert torch.allclose(same, torch.ones(50, dtype=torch.float64))
    assert abs(float(paired_similarity(_gauss(400, 40, 14), _gauss(400, 40, 15)).mean())) < 0.03


def test_denoiser_similarity_is_one_for_proportional_outputs():
    from easyhard.metrics.memorization import denoiser_similarity

    x = _gauss(64, 10, 20)
    assert denoiser_similarity(x, 3.0 * x) == pytest.approx(1.0)
    assert denoiser_similarity(x, -x) == pytest.approx(-1.0)
    assert abs(denoiser_similarity(x, _gauss(64, 10, 21))) < 0.15


def test_wilson_upper_bound_matches_closed_forms():
    from scipy.stats import norm

    from easyhard.metrics.memorization import wilson_upper
    z = norm.ppf(0.975)
    assert wilson_upper(0, 400) == pytest.approx(z * z / (400 + z * z), rel=1e-12)
    # against the textbook two-sided Wilson interval, (p + z^2/2n + z sqrt(p q/n + z^2/4n^2)) / (1 + z^2/n)
    p, n = 0.3, 50
    ref = (p + z * z / (2 * n) + z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert wilson_upper(15, 50) == pytest.approx(ref, rel=1e-12)


def test_exact_copy_of_a_duplicated_training_point_counts_as_memorised():
    train = _gauss(50, 8, 7)
    train[10] = train[20]
    result = memorization_fraction(train[20:21].clone(), train, n_boot=10)
    assert result.value == 1.0
    fresh = memorization_fraction(_gauss(200, 8, 8), train, n_boot=200)
    assert fresh.value == 0.0 and fresh.interval == (0.0, 0.0) and 0 < fresh.wilson_upper < 0.02


def _brute_force(samples, train, k):
    """Float64 brute force from differences, ties to the smaller index: (squared distances, indices)."""
    a, b = samples.reshape(len(samples), -1).double(), train.reshape(len(train), -1).double()
    sq = torch.stack([((row - b) ** 2).sum(1) for row in a])
    order = np.lexsort((np.broadcast_to(np.arange(len(b)), sq.shape), sq.numpy()), axis=1)[:, :k]
    order = torch.from_numpy(order)
    return sq.gather(1, order), order


def test_float32_candidates_with_near_ties_give_the_float64_brute_force(monkeypatch):
    """float32 inputs whose distances differ below float32 resolution, and 40 copies of one training row
    (more than the candidates kept): the round-off certificate fails, the second pass restores the exact answer."""
    import easyhard.metrics.memorization as mem

    g = torch.Generator().manual_seed(3)
    d = 64
    directions = torch.randn((600, d), generator=g, dtype=torch.float64)
    radii = 1.0 + 1e-7 * torch.rand(600, generator=g, dtype=torch.float64)  # norms equal to ~1e-7
    train = (directions / directions.norm(dim=1, keepdim=True) * radii[:, None]).to(torch.float32)
    train[100:140] = train[550]  # 40 exact copies of one row
    samples = torch.cat([1e-9 * torch.randn((20, d), generator=g),  # near the origin: ~600 near-ties
                         train[550:551] + 1e-3 * torch.randn((5, d), generator=g),
                         torch.randn((20, d), generator=g)]).to(torch.float32)
    calls = []
    research = mem._research
    monkeypatch.setattr(mem, "_research", lambda *args: calls.append(len(args[0])) or research(*args))
    ref_sq, ref_i = _brute_force(samples, train, k=3)
    for chunk in (None, 1, 37, 600):
        dist, idx = nearest_neighbours(samples, train, k=3, chunk=chunk)
        assert torch.equal(idx, ref_i) and torch.equal(dist, ref_sq.sqrt())
    assert calls and max(calls) >= 25  # the near-tie samples went through the second pass
    assert ref_i[20].tolist() == [100, 101, 102]
    # cosine on float32 inputs agrees with the float64 standardised brute force
    sims = standardize(samples) @ standardize(train).T
    s, i = nearest_neighbours(samples, train, k=2, metric="cosine", chunk=50)
    np.testing.assert_allclose(s.numpy(), sims.sort(1, descending=True).values[:, :2].numpy(), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_small_problems_compare_all_pairs_with_the_blockwise_answer_exactly(dtype, metric):
    """chunk=None on a small problem takes every pair at once; an explicit chunk forces the blockwise search:
    the same float64 brute-force answer to the bit, ties to the smaller index."""
    g = torch.Generator().manual_seed(4)
    for m, n, d, k in ((1, 2, 1 + (metric == "cosine"), 1), (30, 57, 9, 3), (64, 200, 33, 2)):
        train = torch.randn((n, d), generator=g, dtype=dtype)
        train[0] = train[n - 1]
        samples = torch.randn((m, d), generator=g, dtype=dtype)
        samples[0] = train[n - 1]
        ref = nearest_neighbours(samples, train, k=k, metric=metric)
        for chunk in (n, 5):
            got = nearest_neighbours(samples, train, k=k, metric=metric, chunk=chunk)
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        assert ref[1][0, 0] == 0  # the tie between rows 0 and n - 1 goes to 0


def test_member_axis_gives_each_member_its_own_value():
    a, b = _gauss(4 * 30, 12, 30).reshape(4, 30, 12), _gauss(4 * 30, 12, 31).reshape(4, 30, 12)
    b[1] = 2.0 * a[1] + 5.0  # standardisation removes scale and offset: similarity 1
    paired = paired_similarity(a, b, ensemble=True)
    assert paired.shape == (4, 30) and torch.allclose(paired[1], torch.ones(30, dtype=torch.float64))
    for e in range(4):
        assert torch.equal(paired[e], paired_similarity(a[e], b[e]))
        assert torch.equal(standardize(a, ensemble=True)[e], standardize(a[e]))
    outputs = denoiser_similarity(a, b, ensemble=True)
    assert outputs.shape == (4,)
    assert outputs.tolist() == [denoiser_similarity(a[e], b[e]) for e in range(4)]
    with pytest.raises(ConfigError, match="paired samples must have the same shape"):
        paired_similarity(a, b[:, :5], ensemble=True)


def test_copies_and_ratios_of_distances_broadcast_over_leading_axes():
    dist = torch.tensor([[[1.0, 4.0], [1.0, 2.0], [0.0, 0.0]], [[3.0, 3.0], [0.0, 1.0], [2.0, 5.0]]],
                        dtype=torch.float64)  # (2, 3, 2)
    assert distance_ratio(dist).tolist() == [[0.25, 0.5, 0.0], [1.0, 0.0, 0.4]]
    assert copies_from_distances(dist, 1 / 3).tolist() == [[True, False, True], [False, True, False]]
    assert torch.equal(copies_from_distances(dist[1], 0.45), torch.tensor([False, True, True]))
    with pytest.raises(ConfigError, match="distances must have shape"):
        copies_from_distances(torch.ones(3, 1))


def test_nearest_similarity_is_the_best_standardised_cosine():
    samples, ref = _gauss(25, 10, 40), _gauss(60, 10, 41)
    brute = (standardize(samples) @ standardize(ref).T).max(1).values
    np.testing.assert_allclose(nearest_similarity(samples, ref).numpy(), brute.numpy(), atol=1e-12)


def test_threshold_labels():
    assert [threshold_label(t) for t in (1 / 3, 0.25, 0.5, 0.2000001, 0.3)] == ["1/3", "1/4", "1/2", "1/5", "0.3"]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_member_axis_search_is_each_members_own_search(metric):
    """Members batched through all pairs, or one by one through the blockwise search (explicit chunk): each
    member's answer is the one without the member axis, to the bit."""
    train, samples = _gauss(5 * 40, 7, 50).reshape(5, 40, 7), _gauss(5 * 30, 7, 51).reshape(5, 30, 7)
    train[2, 3] = train[2, 9]  # a tie inside one member
    samples[2, 0] = train[2, 9]
    for chunk in (None, 6):
        dist, idx = nearest_neighbours(samples, train, k=3, metric=metric, chunk=chunk, ensemble=True)
        assert dist.shape == idx.shape == (5, 30, 3)
        for e in range(5):
            d_e, i_e = nearest_neighbours(samples[e], train[e], k=3, metric=metric)
            assert torch.equal(dist[e], d_e) and torch.equal(idx[e], i_e)
    assert idx[2, 0, :2].tolist() == [3, 9]
    assert torch.equal(nearest_similarity(samples, train, ensemble=True)[4], nearest_similarity(samples[4], train[4]))
    with pytest.raises(ConfigError, match="same number of members"):
        nearest_neighbours(samples, train[:4], ensemble=True)
