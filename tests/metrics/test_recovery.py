"""Sustained weak recovery and aligned fractions on hand-made trajectories."""

import numpy as np
import pytest

from easyhard._validate import ConfigError
from easyhard.metrics import aligned_fraction, sustained_recovery

STEPS = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])


def test_sustained_hit_is_kept_and_transient_is_dropped():
    # member 0: crosses 0.5 at step 25 and stays; member 1: brief excursion at 25, then back to 0.1
    traj = np.zeros((len(STEPS), 2))
    traj[3:, 0] = 0.8
    traj[3, 1] = 0.6
    traj[4:, 1] = 0.1
    first_hit = np.array([25, 25])
    out = sustained_recovery(first_hit, STEPS, traj, 0.5)
    np.testing.assert_array_equal(out, [25, -1])


def test_eighty_percent_rule_boundary():
    # 10 later records; 8 above -> kept, 7 above -> dropped
    first_hit = np.array([5, 5])
    traj = np.full((len(STEPS), 2), 0.9)
    traj[[3, 6], 0] = 0.1
    traj[[3, 6, 9], 1] = 0.1
    np.testing.assert_array_equal(sustained_recovery(first_hit, STEPS, traj, 0.5), [5, -1])


def test_never_hit_and_hit_after_last_record():
    traj = np.zeros((len(STEPS), 2))
    out = sustained_recovery(np.array([-1, 100]), STEPS, traj, 0.5)
    np.testing.assert_array_equal(out, [-1, 100])  # no later record: a hit at the end counts


def test_shape_mismatch_is_rejected():
    with pytest.raises(ConfigError, match="abs_overlaps"):
        sustained_recovery(np.array([1, 2]), STEPS, np.zeros((3, 2)), 0.5)


def test_aligned_fraction_uses_last_fifth():
    traj = np.zeros((len(STEPS), 1))
    traj[-2:, 0] = 0.9  # steps 90, 100; the last 20% window holds 80, 90, 100
    np.testing.assert_allclose(aligned_fraction(STEPS, traj, 0.5), [2 / 3])
