"""Memorisation diagnostics: copies vs fresh samples, the fair split comparison, one search, every number against
the library metrics applied by hand, the written report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import easyhard.experiments.diagnose as diagnose_module
from easyhard._validate import ConfigError
from easyhard.experiments.diagnose import diagnose, subsample, write_diagnosis
from easyhard.metrics import (
    bootstrap_mean, copies_from_distances, distance_ratio, fraction_with_interval, nearest_neighbours,
    nearest_similarity, split_similarity)
from easyhard.runs.io import environment_info


def _data(n_train=60, n_test=60, seed=0, shape=(3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_train, *shape, generator=g), torch.randn(n_test, *shape, generator=g), g


def test_copies_give_f_mem_one_and_flags():
    train, test, g = _data()
    samples = train[:40] + 1e-3 * torch.randn(40, 3, 4, 4, generator=g)
    result = diagnose(samples, train, test, n_boot=200)
    assert [m["threshold"] for m in result["memorization"]] == pytest.approx([1 / 4, 1 / 3, 1 / 2])
    assert all(m["value"] == 1.0 and m["copies"] == 40 for m in result["memorization"])
    assert result["nn_train"]["distinct_nearest"] == 40 and result["nn_train"]["exact_copies"] == 0
    assert result["closest"][0]["train"] == result["closest"][0]["sample"]
    split = result["split"]
    assert split["gap"]["interval"][0] > 0.5 and split["closer_to_train"]["value"] == 1.0
    assert {f["id"] for f in result["flags"]} == {"copies", "closer_to_train", "nearer_than_novel"}
    json.dumps(result)


def test_fresh_samples_give_f_mem_zero_and_no_flags():
    train, test, g = _data()
    samples = torch.randn(80, 3, 4, 4, generator=g)
    result = diagnose(samples, train, test, n_boot=200, seed=1)
    main = result["memorization"][1]
    assert main["value"] == 0 and main["interval"] == [0.0, 0.0] and 0 < main["wilson_upper"] < 0.06
    assert result["split"]["reference"]["copies"][1]["copies"] == 0
    lo, hi = result["split"]["gap"]["interval"]
    assert lo < 0 < hi and result["flags"] == []
    assert result["nn_train"]["ratio"]["median"] > 0.8


def test_unequal_split_sizes_compare_equal_subsets():
    """A larger train set makes naive nearest-neighbour similarity favour train; the subsets remove that."""
    train, test, g = _data(n_train=400, n_test=40, shape=(6,))
    samples = torch.randn(300, 6, generator=g)
    naive = split_similarity(samples, train, test)["gap"]
    split = diagnose(samples, train, test, n_boot=200)["split"]
    assert split["subset_size"] == 40 and split["subsampled"] == "train"
    assert naive > 0.02 and split["gap"]["interval"][0] < 0 < split["gap"]["interval"][1]
    assert abs(split["closer_to_train"]["value"] - 0.5) < 0.1


def test_one_search_serves_all_thresholds(monkeypatch):
    calls = []
    real = diagnose_module.nearest_neighbours
    monkeypatch.setattr(diagnose_module, "nearest_neighbours", lambda *a, **k: calls.append(k) or real(*a, **k))
    train, _, g = _data()
    diagnose(torch.randn(10, 3, 4, 4, generator=g), train, thresholds=(0.1, 0.2, 1 / 3, 0.5, 0.9), n_boot=20)
    assert calls == [{"k": 2}]


@pytest.mark.parametrize("kwargs,text", [
    ({"samples": torch.zeros(3, 1, 4, 4)}, "items of one shape (got samples (1, 4, 4), train (3, 4, 4)"),
    ({"test": torch.zeros(3, 48)}, "test (48,)"),
    ({"thresholds": (0.3, 1.0)}, "thresholds must be"),
    ({"n_boot": 5}, "n_boot"),
    ({"train": torch.zeros(1, 3, 4, 4)}, "at least 2 points"),
    ({"samples": torch.full((2, 3, 4, 4), float("nan"))}, "samples must hold finite"),
])
def test_bad_inputs_raise_one_line(kwargs, text):
    train, test, _ = _data(n_test=5)
    args = {"samples": train[:3], "train": train, "test": test} | kwargs
    with pytest.raises(ConfigError) as info:
        diagnose(**args)
    assert text in str(info.value) and "\n" not in str(info.value)


def test_subsample_is_seeded_and_ordered():
    x = torch.arange(20.0)[:, None]
    y, idx = subsample(x, 5, seed=3)
    assert len(y) == 5 and list(idx) == sorted(idx) and torch.equal(y[:, 0], torch.from_numpy(idx).float())
    assert subsample(x, 50)[1] is None


def test_write_diagnosis_files(tmp_path):
    train, test, g = _data()
    result = diagnose(train[:5].clone(), train, test, n_boot=20)
    paths = write_diagnosis(tmp_path / "out", result, {"command": "diagnose", "seed": 0}, environment_info())
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.json", "report.md", "run.json", "diagnose.png"}
    saved = json.loads(paths["results"].read_text())
    assert saved["memorization"] == json.loads(json.dumps(result["memorization"])) and "packages" in saved["environment"]
    assert json.loads(paths["run"].read_text())["config"] == {"command": "diagnose", "seed": 0}
    report = paths["report"].read_text()
    for text in ("## Memorisation fraction f_mem", "| 1/3 | 5 | 1.0000", "exact_copies", "![", "diagnose.png",
                 "## Own (train) versus other (test) split"):
        assert text in report, text
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("n_test", [60, 45])  # equal sizes, and a train set subsampled to the test size
def test_diagnosis_equals_the_library_metrics_applied_by_hand(n_test):
    """Every number of the diagnosis from easyhard.metrics called directly: copies and f_mem with their bootstrap,
    d1/d2, the reference copies of test points, and the own- versus other-split similarities with the bootstrap
    means (seeds [seed, k] as documented, the larger set replaced by a seeded subset)."""
    train, test, g = _data(n_test=n_test)
    samples = torch.cat([train[:20] + torch.logspace(-3, 0, 20)[:, None, None, None] * torch.randn(20, 3, 4, 4,
                                                                                                    generator=g),
                         torch.randn(30, 3, 4, 4, generator=g)])
    seed, n_boot, level = 7, 300, 0.9
    result = diagnose(samples, train, test, n_boot=n_boot, seed=seed, level=level)
    dist, _ = nearest_neighbours(samples, train, k=2)
    for entry, t in zip(result["memorization"], (1 / 4, 1 / 3, 1 / 2)):
        expected = fraction_with_interval(copies_from_distances(dist, t), t, n_boot, level, seed).to_dict()
        assert {k: entry[k] for k in expected} == expected | {"interval": list(expected["interval"])}
    counts = [m["copies"] for m in result["memorization"]]
    assert 0 < counts[0] < counts[2] < 50  # the thresholds disagree on some samples: each count is tested
    assert result["per_sample"]["ratio"] == distance_ratio(dist).tolist()
    assert result["per_sample"]["d1"] == dist[:, 0].tolist()
    ref, _ = nearest_neighbours(test, train, k=2)
    split = result["split"]
    assert [c["copies"] for c in split["reference"]["copies"]] == [
        int(copies_from_distances(ref, t).sum()) for t in (1 / 4, 1 / 3, 1 / 2)]
    own = train if n_test == len(train) else train[torch.from_numpy(
        np.sort(np.random.default_rng([seed, 1]).choice(len(train), n_test, replace=False)))]
    s_own, s_other = nearest_similarity(samples, own), nearest_similarity(samples, test)
    assert split["own"] == float(s_own.mean()) and split["other"] == float(s_other.mean())
    assert split["gap"]["value"] == pytest.approx(split_similarity(samples, own, test)["gap"], rel=1e-12)
    expected = bootstrap_mean((s_own - s_other).numpy(), n_boot, level, [seed, 2]).to_dict()
    assert split["gap"] == expected | {"interval": list(expected["interval"])}
    cut = float(np.quantile(ref[:, 0].numpy(), 0.05))
    nearer = bootstrap_mean((dist[:, 0] < cut).double().numpy(), n_boot, level, [seed, 3])
    assert split["nearer_than_reference"]["interval"] == list(nearer.interval)
    l2_own, l2_other = nearest_neighbours(samples, own, k=1)[0][:, 0], nearest_neighbours(samples, test, k=1)[0][:, 0]
    closer = bootstrap_mean(((l2_own < l2_other).double() + 0.5 * (l2_own == l2_other).double()).numpy(), n_boot,
                            level, [seed, 5])
    assert split["closer_to_train"]["value"] == closer.value and split["closer_to_train"]["se"] == closer.se
