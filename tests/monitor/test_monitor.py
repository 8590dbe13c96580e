"""The monitor on denoisers with known answers: a memorising denoiser, the exact denoiser of the data law, a
planted held-out-loss curve; continued folders, recorded errors and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.mixture import random_mixture
from easyhard.diffusion import DDPMSchedule
from easyhard.diffusion.denoiser import CoefficientDenoiser
from easyhard.monitor.core import Monitor, MonitorConfig, paired_change, Extremum, read_records
from easyhard.oracles import EmpiricalDenoiser

SCHEDULE = DDPMSchedule()
FAST = MonitorConfig(samples=128, pair_samples=32, n_boot=100, loss_test=128, loss_train=64, n_levels=5,
                     sampler_steps=20, pair_steps=20, score_inputs=32)


@pytest.fixture(scope="module")
def data():
    law = random_mixture(d=8, components=4)
    gen = torch.Generator().manual_seed(1)
    return law, law.sample(64, gen).float(), law.sample(512, gen).float()


def _exact(law, scale=lambda: 1.0):
    """The data law's posterior mean E[x0 | x_t] (times ``scale()``) as an x0-denoiser."""
    return CoefficientDenoiser(lambda x, a, s: scale() * law.posterior_mean(x.double(), a, s).float())


def test_memorising_denoiser_is_declared_memorising_at_the_first_update(data, tmp_path):
    _, train, test = data
    record = Monitor(EmpiricalDenoiser(train), train, test, tmp_path, SCHEDULE, config=FAST).update(0)
    assert record["status"] == "memorising"
    assert record["f_mem"]["1/3"]["value"] == 1.0 and record["f_mem"]["1/3"]["interval"][0] == 1.0
    assert record["nn_train"]["q95"] < 1e-3 < record["nn_test"]["q05"]  # copies of training points, not test points
    assert record["quality_kl"] == "inf"  # collapsed samples: the k-NN estimate diverges


def test_exact_denoiser_is_generalising_with_f_mem_upper_bound_below_one_percent(data, tmp_path):
    law, train, test = data
    config = MonitorConfig(samples=512, n_boot=200, loss_test=128, loss_train=64, n_levels=5)
    record = Monitor(_exact(law), train, test, tmp_path, SCHEDULE, config=config).update(0)
    assert record["status"] == "generalising", record["evidence"]
    assert record["f_mem"]["1/3"]["wilson_upper"] < 0.01
    # the exact denoiser does not prefer its "training" points: the own-minus-held-out gap is within noise
    assert abs(record["nn_gap"]) < 4 * record["nn_gap_se"] + 1e-3
    assert abs(record["test_loss_mean"] - record["train_loss_mean"]) < 4 * record["test_loss_mean_se"]


def test_planted_loss_curve_that_turns_up_gives_overfitting_and_the_minimum_as_recommendation(data, tmp_path):
    law, train, test = data
    step = {"now": 0}
    turn = 5
    monitor = Monitor(_exact(law, lambda: 1.0 + 0.04 * abs(step["now"] - turn)), train, test, tmp_path, SCHEDULE,
                      config=FAST)
    statuses = {}
    for s in range(0, 11):
        step["now"] = s
        record = monitor.update(s)
        statuses[s] = record["status"]
        assert record["recommended"]["held_out_loss_min"] == min(s, turn)
    assert all(statuses[s] != "overfitting" for s in range(turn + 1))
    assert all(statuses[s] == "overfitting" for s in range(turn + 2, 11)), statuses
    last = read_records(tmp_path / "monitor.jsonl")[-1]
    assert last["changes"]["test_loss"]["ref_step"] == turn
    assert any("held-out loss" in e for e in last["evidence"])
    assert (tmp_path / "report.md").read_text().count("| overfitting |") >= 4
    assert (tmp_path / "monitor.png").stat().st_size > 0


def test_twin_of_the_same_law_is_not_biased_and_paired_samples_agree(data, tmp_path):
    law, train, test = data
    record = Monitor(_exact(law), train, test, tmp_path, SCHEDULE, config=FAST, twin=_exact(law),
                     twin_train=test[-64:]).update(3)
    assert record["pair_similarity"] == pytest.approx(1.0, abs=1e-6)  # the same denoiser under shared noise
    assert record["denoiser_similarity_train"] == pytest.approx(1.0, abs=1e-6)
    assert record["recommended"]["split_similarity_peak"] == 3


def test_paired_change_is_the_mean_difference_with_its_standard_error():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(400, generator=gen, dtype=torch.float64)
    now = ref + 0.1 + 0.01 * torch.randn(400, generator=gen, dtype=torch.float64)
    change, se = paired_change([now], Extremum(0, float(ref.mean()), [ref]))
    assert change == pytest.approx(float((now - ref).mean()), rel=1e-12)
    assert se == pytest.approx(float((now - ref).std() / 20), rel=1e-12)
    # two groups: (mean(u0) - mean(u1)) changes by the difference of the two paired means
    change2, se2 = paired_change([now, ref + 0.3], Extremum(0, 0.0, [ref, ref]))
    assert change2 == pytest.approx(change - 0.3, abs=1e-12) and se2 == pytest.approx(se, rel=1e-9)


def test_a_continued_folder_skips_recorded_steps_and_refuses_another_config(data, tmp_path):
    law, train, test = data
    first = Monitor(_exact(law), train, test, tmp_path, SCHEDULE, config=FAST)
    first.update(10)
    first.update(20)
    again = Monitor(_exact(law), train, test, tmp_path, SCHEDULE, config=FAST)
    assert again.last_step == 20
    assert again.update(10)["step"] == 10  # recorded: returned, not measured again
    again.update(30)
    assert [r["step"] for r in read_records(tmp_path / "monitor.jsonl")] == [10, 20, 30]
    with pytest.raises(ConfigError, match="another config or other data"):
        Monitor(_exact(law), train, test, tmp_path, SCHEDULE, config=MonitorConfig(samples=64))
    with pytest.raises(ConfigError, match="another config or other data"):
        Monitor(_exact(law), train[:32], test, tmp_path, SCHEDULE, config=FAST)


def test_a_crash_between_the_state_and_the_records_write_continues_from_the_previous_state(data, tmp_path):
    """The state is written before the records: a crash in between leaves the state one step ahead. The folder
    continues from the state before it, and measuring that step again gives the record of an uninterrupted run."""
    law, train, test = data
    whole = Monitor(_exact(law), train, test, tmp_path / "whole", SCHEDULE, config=FAST)
    crashed = Monitor(_exact(law), train, test, tmp_path / "crashed", SCHEDULE, config=FAST)
    for step in (10, 20):
        whole.update(step)
        crashed.update(step)
    records_before = (tmp_path / "crashed" / "monitor.jsonl").read_text()
    expected = whole.update(30)
    crashed.update(30)
    (tmp_path / "crashed" / "monitor.jsonl").write_text(records_before)  # the records write of step 30 never happened
    resumed = Monitor(_exact(law), train, test, tmp_path / "crashed", SCHEDULE, config=FAST)
    assert resumed.last_step == 20
    again = resumed.update(30)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}
    assert resumed.update(40)["changes"] == whole.update(40)["changes"]
    # two records lost: no state matches, the folder is refused with one line
    lines = records_before.splitlines(keepends=True)
    (tmp_path / "crashed" / "monitor.jsonl").write_text(lines[0])
    with pytest.raises(ConfigError, match="does not match the last record"):
        Monitor(_exact(law), train, test, tmp_path / "crashed", SCHEDULE, config=FAST)


def test_an_error_inside_update_raises_by_default_and_is_recorded_with_strict_false(data, tmp_path):
    law, train, test = data
    broken = {"on": False}

    def eps(x, i):
        return torch.full_like(x, float("nan")) if broken["on"] else torch.zeros_like(x)

    monitor = Monitor(eps, train, test, tmp_path / "a", SCHEDULE, config=FAST)
    broken["on"] = True
    with pytest.raises(ConfigError, match="NaN or inf"):
        monitor.update(1)
    broken["on"] = False
    lenient = Monitor(eps, train, test, tmp_path / "b", SCHEDULE, config=FAST, strict=False)
    broken["on"] = True
    record = lenient.update(1)
    assert "NaN or inf" in record["error"]
    broken["on"] = False
    assert lenient.update(2)["status"] in ("generalising", "biased", "overfitting")
    lines = [json.loads(line) for line in (tmp_path / "b" / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and "error" in lines[0]
    # a recorded error as the last record does not block continuing the folder
    broken["on"] = True
    assert "error" in lenient.update(3)
    broken["on"] = False
    resumed = Monitor(eps, train, test, tmp_path / "b", SCHEDULE, config=FAST, strict=False)
    assert resumed.update(4)["changes"]["test_loss"]["ref_step"] is not None


@pytest.mark.parametrize("make, message", [
    (lambda tr, te: (tr, te[:, :4]), "same shape"),
    (lambda tr, te: (tr, 255 * te + 128), "different scales"),
    (lambda tr, te: (tr[:1], te), "at least 2 points"),
    (lambda tr, te: (tr.clone().index_fill_(0, torch.tensor([3]), float("nan")), te), "train holds NaN"),
    (lambda tr, te: (tr.long(), te), "floating-point"),
])
def test_bad_data_gives_one_line_errors(data, tmp_path, make, message):
    law, train, test = data
    tr, te = make(train, test)
    with pytest.raises(ConfigError, match=message) as err:
        Monitor(_exact(law), tr, te, tmp_path, SCHEDULE, config=FAST)
    assert "\n" not in str(err.value)


def test_model_output_of_the_wrong_shape_or_nan_is_refused_before_anything_is_written(data, tmp_path):
    _, train, test = data
    with pytest.raises(ConfigError, match="output shape"):
        Monitor(lambda x, i: x[:, :3], train, test, tmp_path / "a", SCHEDULE, config=FAST)
    with pytest.raises(ConfigError, match="NaN or inf"):
        Monitor(lambda x, i: x * float("nan"), train, test, tmp_path / "b", SCHEDULE, config=FAST)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="schedule"):
        Monitor(lambda x, i: x, train, test, tmp_path / "c")
    with pytest.raises(ConfigError, match="twin and twin_train"):
        Monitor(lambda x, i: x, train, test, tmp_path / "d", SCHEDULE, config=FAST, twin=lambda x, i: x)
