"""The sample-split memorisation experiment: analysis against constructed records, and a smoke run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from easyhard._validate import ConfigError
from easyhard.experiments.memorization import SMOKE, MemorizationConfig, analyse, run_memorization
from easyhard.train.ensemble import EnsembleTrainConfig


def _records(config: MemorizationConfig, steps: list[int], onset: dict[int, int], peak: dict[int, int],
             loss_min: dict[int, int]) -> list[dict]:
    """Records with known answers: member copies jump to 20% at step onset[n]; the cross-split similarity peaks at
    checkpoint peak[n] (0.9, floor 0.1); the test loss is a V with its minimum at checkpoint loss_min[n]; the KL
    reaches its best at checkpoint 3 + (position of n in ns)."""
    S, N, K, L = config.seeds, len(config.ns), config.splits, config.loss_levels
    P = K * (K - 1) // 2
    records = []
    for c, step in enumerate(steps):
        copies = np.zeros((S, N, K, len(config.thresholds)), dtype=int)
        sim = np.zeros((S, N, P))
        loss = np.zeros((S, N, K, L))
        for j, n in enumerate(config.ns):
            copies[:, j] = int(0.2 * config.mem_samples) if step >= onset[n] else 0
            sim[:, j] = 0.9 if c == peak[n] else 0.2
            loss[:, j] = 0.3 + 0.01 * abs(c - loss_min[n]) + (0.5 if c == 0 else 0.0)
        E = S * N * K
        records.append({"step": step, "copies": copies.reshape(E, -1).tolist(), "similarity": sim.tolist(),
                        "floor": np.full(E, 0.1).tolist(), "test_loss": loss.reshape(E, L).tolist(),
                        "train_loss": (0.9 * loss).reshape(E, L).tolist(), "emp_distance": np.ones((E, L)).tolist(),
                        "nn_distance": np.ones(E).tolist(), "delta_nn": np.zeros((S, N)).tolist(),
                        "score_train": np.ones((S, N)).tolist(), "score_test": np.ones((S, N)).tolist(),
                        "kl": np.repeat([10.0 - min(c, 3 + j) for j in range(N)], K)[None].repeat(S, 0).ravel().tolist()})
    return records


def test_analysis_recovers_constructed_timescales_and_ordering():
    config = dataclasses.replace(SMOKE, ns=(16, 32, 64), seeds=3, splits=3)
    steps = [10 * 2**k for k in range(12)]  # 10 .. 20480
    onset = {16: 160, 32: 320, 64: 640}  # tau_mem = 10 n exactly: slope 1
    result = analyse(config, _records(config, steps, onset, peak={16: 3, 32: 3, 64: 4},
                                      loss_min={16: 4, 32: 6, 64: 8}))
    fit = result["fits"][str(config.threshold)]
    assert fit["kappa"] == pytest.approx(1.0, abs=1e-12) and list(fit["medians"]) == [160, 320, 640]
    assert result["tau_split"] == [[80, 80, 160]] * 3 and result["tau_loss"] == [[160, 640, 2560]] * 3
    assert result["lead_checkpoints"] == [[1, 3, 4]] * 3
    assert result["slopes"]["tau_loss"] == pytest.approx(2.0) and result["slopes"]["tau_split"] == pytest.approx(0.5)
    assert result["window_slope"] == pytest.approx(1.5)
    # the KL reaches its best at checkpoint 3 + (position of n): tau_gen = 80, 160, 320 = 5 n
    assert result["tau_gen"] == [[[80] * 3, [160] * 3, [320] * 3]] * 3
    assert result["slopes"]["tau_gen"] == pytest.approx(1.0, abs=1e-12)
    checks = result["checks"]
    assert checks["tau_mem_slope"]["passed"] and checks["tau_mem_increasing"]["passed"]
    assert checks["split_peak_before_loss_min"]["passed"] and checks["window_widens"]["passed"]
    np.testing.assert_allclose(checks["split_peak_above_floor"]["value"], [[0.8, 0.8]] * 3)


def test_peak_is_searched_only_after_the_loss_has_dropped():
    """A similarity maximum at initialisation (shared noise, untrained models) is not the split peak."""
    config = dataclasses.replace(SMOKE, ns=(16, 32, 64), seeds=1, splits=2)
    steps = [10 * 2**k for k in range(8)]
    records = _records(config, steps, {16: 80, 32: 160, 64: 320}, peak={16: 0, 32: 0, 64: 0},
                       loss_min={16: 5, 32: 5, 64: 5})
    result = analyse(config, records)
    assert all(t > steps[0] for t in result["tau_split"][0])


def test_bad_settings_give_one_line_errors():
    with pytest.raises(ConfigError, match="ns must be increasing"):
        MemorizationConfig(ns=(32, 16))
    with pytest.raises(ConfigError, match="fit_min_n"):
        MemorizationConfig(ns=(8, 16), fit_min_n=16)
    with pytest.raises(ConfigError, match="data cifar10 needs"):
        MemorizationConfig(data="cifar10")
    with pytest.raises(ConfigError, match="threshold"):
        MemorizationConfig(threshold=0.2)


def test_smoke_run_measures_every_checkpoint_and_a_rerun_only_reanalyses(tmp_path):
    result = run_memorization(SMOKE, tmp_path)
    records = json.loads((tmp_path / "records.json").read_text())
    assert [r["step"] for r in records] == SMOKE.train.checkpoint_steps() == result["steps"]
    assert np.isfinite(np.array(result["test_loss"])).all()
    assert set(result["checks"]) >= {"tau_mem_slope", "split_peak_before_loss_min", "window_widens"}
    state = (tmp_path / "state.pt").stat().st_mtime_ns
    again = run_memorization(SMOKE, tmp_path)
    assert (tmp_path / "state.pt").stat().st_mtime_ns == state and again == result
    other = dataclasses.replace(SMOKE, train=EnsembleTrainConfig(steps=130, checkpoints=5, first=10))
    with pytest.raises(ConfigError, match="another config"):
        run_memorization(other, tmp_path)


def test_image_patch_version_runs_with_a_held_out_quality_measure(tmp_path):
    pytest.importorskip("skimage")
    config = dataclasses.replace(SMOKE, data="patches", patch_size=4, seeds=1, n_test=300)
    result = run_memorization(config, tmp_path)
    assert "exact_distance" not in result and np.isfinite(np.array(result["kl"])).any()
    assert len(result["tau_gen"]) == 1 and np.isfinite(np.array(result["test_loss"])).all()
