"""The blockwise nearest-neighbour search on wide blocks (candidates through the minima of column groups), the
two-stage exact re-ranking and the block shapes: every path gives the float64 brute-force answer to the bit,
whatever the chunk, including exact ties, near-ties below float32 resolution, the cosine metric and the member
axis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import easyhard.metrics.memorization as mem
from easyhard.metrics.memorization import nearest_neighbours, standardize


def _brute_force(samples, train, k, metric="l2"):
    """(distances, indices) of the float64 brute force from differences, ties to the smaller index."""
    a, b = samples.reshape(len(samples), -1).double(), train.reshape(len(train), -1).double()
    if metric == "cosine":
        a, b = standardize(a), standardize(b)
    sq = torch.stack([((row - b) ** 2).sum(1) for row in a])
    order = torch.from_numpy(np.lexsort((np.broadcast_to(np.arange(len(b)), sq.shape), sq.numpy()), axis=1)[:, :k])
    dist = sq.gather(1, order).sqrt()
    return (1.0 - dist**2 / 2.0 if metric == "cosine" else dist), order


def _hard_problem(dtype, seed=0, m=60, n=3000, d=40):
    """Training points with exact duplicates (a pair, and 40 copies of one row: more than the candidates kept),
    points on a sphere whose norms differ below float32 resolution, and samples that copy, nearly copy or sit
    at the centre of those points (hundreds of near-ties)."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randn((n, d), generator=g, dtype=torch.float64)
    lo, hi, copied = n // 3, n // 3 + 400, 2 * n // 3
    sphere = torch.randn((400, d), generator=g, dtype=torch.float64)
    radii = 1.0 + 1e-7 * torch.rand((400, 1), generator=g, dtype=torch.float64)
    train[lo:hi] = sphere / sphere.norm(dim=1, keepdim=True) * radii
    train[n - 1] = train[7]
    train[100:140] = train[copied]
    samples = torch.randn((m, d), generator=g, dtype=torch.float64)
    samples[0] = train[n - 1]
    samples[1:6] = train[copied] + 1e-3 * torch.randn((5, d), generator=g, dtype=torch.float64)
    samples[6:16] = 1e-9 * torch.randn((10, d), generator=g, dtype=torch.float64)
    return samples.to(dtype), train.to(dtype)


def test_smallest_keeps_no_value_larger_than_one_left_out():
    g = torch.Generator().manual_seed(1)
    for w in (5, 100, 703, 704, 1000, 4097):
        for keep in (3, 11):
            for block in (torch.randint(0, 4, (7, w), generator=g).float(), torch.randn((7, w), generator=g)):
                s, cols = mem._smallest(block, keep)
                assert s.shape == cols.shape == (7, min(keep, w))
                assert torch.equal(s, block.gather(1, cols))
                left = torch.ones_like(block, dtype=torch.bool).scatter_(1, cols, False)
                assert (left.sum(1) == w - min(keep, w)).all()  # distinct columns
                if w > keep:
                    assert (s.max(1).values <= block.masked_fill(~left, torch.inf).min(1).values).all()
                ref = torch.topk(block, min(keep, w), dim=1, largest=False).values
                assert torch.equal(s.sort(1).values, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_wide_blocks_give_the_float64_brute_force_for_every_chunk(dtype, metric, monkeypatch):
    """chunk=None takes all 3000 training rows in one block (grouped selection); 777 leaves columns outside the
    groups; 50 and 7 select element by element. Near-ties send samples through both re-ranking stages and the
    second search."""
    samples, train = _hard_problem(dtype)
    assert len(samples) * train.numel() > mem._ALL_PAIRS  # chunk=None searches block by block
    calls = {"rank": [], "research": 0}
    rank, research = mem._rank, mem._research
    monkeypatch.setattr(mem, "_rank", lambda q64, *args: calls["rank"].append(len(q64)) or rank(q64, *args))
    monkeypatch.setattr(mem, "_research",
                        lambda *args: calls.__setitem__("research", calls["research"] + 1) or research(*args))
    ref_d, ref_i = _brute_force(samples, train, k=3, metric=metric)
    for chunk in (None, 3000, 777, 50, 7):
        dist, idx = nearest_neighbours(samples, train, k=3, metric=metric, chunk=chunk)
        assert torch.equal(idx, ref_i) and torch.equal(dist, ref_d), chunk
    if metric == "l2":
        assert ref_i[0, :2].tolist() == [7, 2999] and ref_i[1, :3].tolist() == [100, 101, 102]
    assert min(calls["rank"]) < len(samples)  # some rows needed all their candidates re-ranked
    if dtype == torch.float32 and metric == "l2":
        assert calls["research"]  # and some the second search


@pytest.mark.parametrize("k", [1, 2, 5])
def test_first_stage_rerank_and_the_smallest_problems(k):
    """k = 1 re-ranks two candidates first; k = n makes every point a candidate."""
    samples, train = _hard_problem(torch.float32, seed=2, m=40, n=1200, d=8)
    ref = _brute_force(samples, train, k)
    for chunk in (1200, 500, 3):
        got = nearest_neighbours(samples, train, k=k, chunk=chunk)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    small = train[:k]
    ref = _brute_force(samples, small, k)
    got = nearest_neighbours(samples, small, k=k, chunk=2)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_several_row_blocks_reuse_the_training_norms(metric, monkeypatch):
    """A small block budget splits the samples into row blocks (the training norms are computed in the first and
    reused) and gives the default chunk from the sample count."""
    samples, train = _hard_problem(torch.float32, seed=3, m=300, n=2000, d=16)
    ref = _brute_force(samples, train, 3, metric)
    monkeypatch.setattr(mem, "_BLOCK", 2**16)
    for chunk in (None, 1000):
        got = nearest_neighbours(samples, train, k=3, metric=metric, chunk=chunk)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_member_axis_through_wide_blocks(metric):
    """Members one by one through the blockwise search (explicit chunk) or batched through all pairs (None): each
    member's brute-force answer, to the bit."""
    parts = [_hard_problem(torch.float32, seed=10 + e, m=30, n=1500, d=16) for e in range(3)]
    samples, train = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    for chunk in (None, 1500, 800):
        dist, idx = nearest_neighbours(samples, train, k=3, metric=metric, chunk=chunk, ensemble=True)
        for e in range(3):
            ref_d, ref_i = _brute_force(samples[e], train[e], 3, metric)
            assert torch.equal(idx[e], ref_i) and torch.equal(dist[e], ref_d)
