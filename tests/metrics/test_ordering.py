"""Phase ordering by the curves: planted orderings are found with the right markers and lead, coinciding or
reversed extrema are never ordered, the z criterion responds to noise, and the bootstrap matches brute force."""

from __future__ import annotations

import numpy as np
import pytest

from easyhard._validate import ConfigError
from easyhard.metrics.bootstrap import bootstrap_replicates
from easyhard.metrics.ordering import Marker, PhaseOrdering, _replicate_means, locate, paired_difference, phase_ordering

STEPS = np.round(np.geomspace(10, 8000, 20)).astype(int)
C = len(STEPS)


def _peak(position: int, width: float = 2.0) -> np.ndarray:
    """A bump of height 1 at checkpoint ``position`` (C,)."""
    return np.exp(-0.5 * ((np.arange(C) - position) / width) ** 2)


def _valley(position: int) -> np.ndarray:
    """A U-shaped curve with its minimum 0 at checkpoint ``position`` (C,)."""
    return 0.01 * (np.arange(C) - position) ** 2


def _units(curve: np.ndarray, shape: tuple[int, ...], noise: float, seed: int) -> np.ndarray:
    """curve plus independent N(0, noise^2) per unit and checkpoint: shape + (C,)."""
    return curve + noise * np.random.default_rng(seed).standard_normal((*shape, C))


def test_planted_ordering_is_found_with_its_markers_lead_and_intervals():
    similarity = _units(_peak(6), (6,), 0.02, seed=1)  # pairs
    loss = _units(_valley(13), (4, 50), 0.05, seed=2)  # models x test inputs
    result = phase_ordering(STEPS, similarity, loss, early_maximum=True)
    assert (result.early.position, result.late.position, result.lead) == (6, 13, 7)
    assert (result.early.step, result.late.step) == (STEPS[6], STEPS[13])
    assert result.early.interval[0] <= STEPS[6] <= result.early.interval[1]
    assert result.late.interval[0] <= STEPS[13] <= result.late.interval[1]
    assert result.lead_interval[0] <= 7 <= result.lead_interval[1]
    assert result.ordered and result.early_z > 3 and result.late_z > 3
    # the gaps are the differences of the unit-mean curves at the two markers
    assert result.early_gap == pytest.approx(similarity[:, 6].mean() - similarity[:, 13].mean(), rel=1e-12)
    assert result.late_gap == pytest.approx(loss[..., 6].mean() - loss[..., 13].mean(), rel=1e-12)


def test_coinciding_extrema_give_zero_gaps_and_are_never_ordered():
    result = phase_ordering(STEPS, _units(_peak(9), (6,), 0.01, 3), _units(_valley(9), (4,), 0.01, 4), True)
    assert result.lead == 0 and result.early_gap == 0 and result.late_gap == 0 and not result.ordered
    assert np.copysign(1, result.early_gap) == 1  # a maximum's gap is negated: no negative zero in the records
    # even without noise (zero errors)
    exact = phase_ordering(STEPS, np.tile(_peak(9), (3, 1)), np.tile(_valley(9), (3, 1)), True)
    assert exact.early_se == 0 and exact.late_se == 0 and not exact.ordered and exact.early_z == 0
    assert exact.to_dict()["early_z"] == 0 and exact.to_dict()["late_z"] == 0


def test_positive_gaps_with_zero_error_are_ordered():
    """Identical units: every replicate is the full curve, the errors are 0 and positive gaps decide."""
    result = phase_ordering(STEPS, np.tile(_peak(4), (3, 1)), np.tile(_valley(10), (2, 1)), True)
    assert result.early_se == 0 and result.late_se == 0 and result.ordered
    assert result.early.interval == (STEPS[4], STEPS[4]) and result.lead_interval == (6, 6)
    assert result.to_dict()["early_z"] is None and result.early_z == np.inf


def test_reversed_order_is_not_ordered():
    result = phase_ordering(STEPS, _units(_peak(14), (6,), 0.01, 5), _units(_valley(5), (4,), 0.01, 6), True)
    assert result.lead == -9 and result.early_gap > 0 and result.late_gap > 0 and not result.ordered


@pytest.mark.parametrize("noise_seed", range(5))
def test_the_z_criterion_responds_to_the_noise_level(noise_seed):
    quiet = phase_ordering(STEPS, _units(0.05 * _peak(6), (6,), 0.002, noise_seed),
                           _units(0.05 * _peak(13) * -1, (4,), 0.002, 10 + noise_seed), True)
    loud = phase_ordering(STEPS, _units(0.05 * _peak(6), (6,), 1.0, noise_seed),
                          _units(0.05 * _peak(13) * -1, (4,), 1.0, 10 + noise_seed), True)
    assert quiet.ordered and (quiet.early.position, quiet.late.position) == (6, 13)
    assert not loud.ordered


def test_directions_are_symmetric():
    """A minimum of -S is the maximum of S; a maximum of -L is the minimum of L: same markers, gaps and errors."""
    similarity, loss = _units(_peak(5), (6,), 0.05, 7), _units(_valley(12), (4, 20), 0.2, 8)
    base = phase_ordering(STEPS, similarity, loss, True)
    flipped = phase_ordering(STEPS, -similarity, -loss, early_maximum=False, late_maximum=True)
    assert flipped == base


def test_eligible_restricts_the_early_marker_only():
    similarity = _units(_peak(2) + 0.8 * _peak(8), (6,), 0.01, 9)  # the global maximum at 2 is not eligible
    eligible = np.arange(C) >= 5
    marker = locate(STEPS, similarity, maximum=True, eligible=eligible)
    assert marker.position == 8 and marker.interval[0] >= STEPS[5]
    assert locate(STEPS, similarity, maximum=True).position == 2
    result = phase_ordering(STEPS, similarity, _units(_valley(3), (4,), 0.001, 10), True, eligible=eligible)
    assert (result.early.position, result.late.position) == (8, 3)


def test_two_way_replicates_resample_rows_and_columns_independently():
    """Each replicate mean equals the mean of curves[rows][:, cols] for the indices the bootstrap draws."""
    curves = np.random.default_rng(11).standard_normal((4, 7, C))
    fast = _replicate_means(curves, 50, seed=3)
    slow = bootstrap_replicates(lambda rows, cols: curves[rows][:, cols].mean((0, 1)), (4, 7), 50, 3)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    one_way = _replicate_means(curves[:, 0], 50, seed=3)
    np.testing.assert_allclose(one_way, bootstrap_replicates(lambda rows: curves[rows, 0].mean(0), 4, 50, 3),
                               rtol=1e-12, atol=1e-12)


def test_paired_difference_error_matches_the_plug_in_standard_error():
    """For U units the bootstrap SE of a mean difference tends to the plug-in sqrt(sum (d_u - dbar)^2) / U."""
    curves = _units(np.zeros(C), (40,), 1.0, 12)
    diff, se = paired_difference(curves, at=3, ref=9, n_boot=20000, seed=0)
    d = curves[:, 3] - curves[:, 9]
    assert diff == pytest.approx(d.mean(), rel=1e-12)
    assert se == pytest.approx(np.sqrt(((d - d.mean()) ** 2).sum()) / len(d), rel=0.03)
    # paired: a shift common to both checkpoints of a unit does not enter the error
    shifted = curves + 100 * np.random.default_rng(13).standard_normal((40, 1))
    assert paired_difference(shifted, 3, 9, n_boot=20000, seed=0)[1] == pytest.approx(se, rel=1e-6)


def test_records_are_json_ready():
    result = phase_ordering(STEPS, _units(_peak(6), (6,), 0.02, 1), _units(_valley(13), (4,), 0.05, 2), True)
    out = result.to_dict()
    assert isinstance(result, PhaseOrdering) and isinstance(result.early, Marker)
    assert out["early"] == result.early.to_dict() and out["early_z"] == pytest.approx(result.early_z)
    assert set(out) == {"early", "late", "lead", "lead_interval", "early_gap", "early_se", "late_gap", "late_se",
                        "z", "ordered", "early_z", "late_z"}


@pytest.mark.parametrize("call, message", [
    (lambda: locate(STEPS, np.zeros(C)), "curves must have shape"),
    (lambda: locate(STEPS, np.zeros((3, C - 1))), "curves must have shape"),
    (lambda: locate(STEPS, np.zeros((2, 2, 2, C))), "curves must have shape"),
    (lambda: locate(STEPS, np.full((3, C), np.nan)), "curves must be finite"),
    (lambda: locate(STEPS[::-1], np.zeros((3, C))), "strictly increasing"),
    (lambda: locate(STEPS.astype(float), np.zeros((3, C))), "integer steps"),
    (lambda: locate(STEPS, np.zeros((3, C)), eligible=np.zeros(C, dtype=bool)), "eligible"),
    (lambda: locate(STEPS, np.zeros((3, C)), eligible=np.ones(C - 1, dtype=bool)), "eligible"),
    (lambda: paired_difference(np.zeros((3, C)), at=C, ref=0), "at must be a checkpoint position"),
    (lambda: phase_ordering(STEPS, np.zeros((3, C)), np.zeros((3, C + 1)), True), "late_curves must have shape"),
    (lambda: phase_ordering(STEPS, np.zeros((3, C)), np.zeros((3, C)), True, z=-1), "z must be >= 0"),
    (lambda: phase_ordering(STEPS, np.zeros((3, C)), np.zeros((3, C)), True, n_boot=1), "n_boot"),
])
def test_bad_input_raises_one_line_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
