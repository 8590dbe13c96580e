"""The --full profile of ``reproduce memorization`` (image patches, wide MLPs, several n) at a small size on CPU."""

from __future__ import annotations

import dataclasses

import numpy as np

from easyhard.experiments.memorization import profile, run_memorization


def test_full_profile_runs_at_small_size_on_cpu(tmp_path):
    full = profile("full")
    assert full.data == "patches" and full.width == 512 and len(full.ns) >= 4
    small = dataclasses.replace(full, ns=(8, 16), fit_min_n=8, seeds=2, splits=2, width=32, depth=2, n_test=64,
                                loss_levels=3, loss_test=16, loss_train=8, mem_samples=16, mem_steps=4,
                                split_samples=16, split_steps=4, score_inputs=8, device="cpu", threads=1,
                                train=dataclasses.replace(full.train, steps=30, batch_size=16, checkpoints=4,
                                                          first=5))
    result = run_memorization(small, tmp_path)
    assert result["steps"] == small.train.checkpoint_steps()
    assert np.isfinite(np.asarray(result["test_loss"])).all()
    assert set(result["checks"]) >= {"tau_mem_finite", "window_widens"}
