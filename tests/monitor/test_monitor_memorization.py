"""A monitor attached to one member of the memorisation experiment (its quick evaluation settings) reproduces that
member's records: the same library functions on the same noise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from easyhard.diffusion import DDPMSchedule
from easyhard.experiments.memorization import QUICK, evaluate, make_probe, make_problem, raw_denoiser
from easyhard.metrics.memorization import threshold_label
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.monitor.core import Monitor, MonitorConfig
from easyhard.train.ensemble import EnsembleTrainConfig, Splits, train_ensemble


@pytest.mark.slow
def test_monitor_on_member_zero_reproduces_the_experiment_records(tmp_path):
    torch.set_num_threads(1)
    config = dataclasses.replace(QUICK, seeds=1, ns=(16, 32), train=EnsembleTrainConfig(steps=300, checkpoints=2,
                                                                                      first=150))
    schedule = DDPMSchedule(T=config.T)
    problem = make_problem(config)
    probe = make_probe(config, problem, schedule)
    model = EnsembleMLP(EnsembleConfig(config.members, problem.test.shape[1], config.width, config.depth,
                                       config.time_dim, time_input=config.time_input, init=config.init,
                                       output_scale=config.output_scale), torch.Generator().manual_seed(1))
    centres = problem.centres
    seen = {}

    def on_checkpoint(step, net):
        seen[step] = (evaluate(net, config, problem, probe, schedule, centres), net)

    splits = Splits(problem.splits.data - centres, problem.splits.counts)
    train_ensemble(model, splits, schedule, config.train, tmp_path / "train", on_checkpoint=on_checkpoint)
    step = max(seen)
    record, net = seen[step]
    eps = raw_denoiser(net, centres, schedule)
    E = config.members

    def member(e):
        return lambda x, i: eps(x.expand(E, *x.shape), i)[e]

    monitor_config = MonitorConfig(levels=tuple(config.loss_indices()), loss_train=config.loss_train,
                                   loss_test=config.loss_test, samples=config.mem_samples, sampler_steps=config.mem_steps,
                                   spacing=config.spacing, thresholds=config.thresholds, threshold=config.threshold,
                                   pair_samples=config.split_samples, pair_steps=config.split_steps, n_boot=100)
    monitor = Monitor(member(0), problem.splits.member(0), problem.test, tmp_path / "monitor", schedule,
                      config=monitor_config, twin=member(1), twin_train=problem.splits.member(1), report=False)
    got = monitor.update(step)
    np.testing.assert_allclose(got["test_loss"], record["test_loss"][0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["train_loss"], record["train_loss"][0], rtol=0, atol=1e-6)
    for t, k in enumerate(config.thresholds):
        assert got["f_mem"][threshold_label(k)]["value"] == pytest.approx(record["copies"][0][t] / config.mem_samples,
                                                                         abs=1e-6)
    pair01 = float(np.mean(record["similarity"][0][0][0]))  # seed 0, n = 16, pair (0, 1), mean over sample blocks
    assert got["pair_similarity"] == pytest.approx(pair01, abs=1e-6)
    assert sum(record["copies"][0]) > 0  # some copies at this checkpoint (measured: 9 at k = 1/2), so f_mem is tested
