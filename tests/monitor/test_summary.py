"""monitor-summary: onsets of monitored runs, Kaplan-Meier medians, the power law over n and its prediction."""

from __future__ import annotations

import json

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.mixture import random_mixture
from easyhard.diffusion import DDPMSchedule
from easyhard.monitor.core import Monitor, MonitorConfig
from easyhard.monitor.summary import run_onset, summarize, summary_lines
from easyhard.oracles import EmpiricalDenoiser


def _run(folder, n, onset, steps):
    """A monitored run's files with the status memorising from ``onset`` on (None: never)."""
    folder.mkdir(parents=True)
    meta = {"identity": {"n_train": n, "config": {"memorising_level": 0.05}}}
    (folder / "monitor.json").write_text(json.dumps(meta))
    lines = [json.dumps({"step": s, "status": "memorising" if onset is not None and s >= onset else "generalising"})
             for s in steps]
    (folder / "monitor.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_power_law_onsets_give_the_exponent_and_the_prediction(tmp_path):
    onsets = {(n, r): int(round(2 * n**1.5 * (1 + 0.02 * r))) for n in (16, 32, 64, 128) for r in range(3)}
    folders = [_run(tmp_path / f"n{n}-{r}", n, t, [0, t - 1, t, 30000]) for (n, r), t in onsets.items()]
    out = summarize(folders, predict=256, n_boot=200)
    assert out["medians"]["64"] == onsets[(64, 1)]  # the median run
    assert out["fit"]["gamma"] == pytest.approx(1.5, abs=0.005)
    p = out["fit"]["predicted"]
    assert p["n"] == 256 and p["onset"] == pytest.approx(2.04 * 256**1.5, rel=0.01)
    assert p["interval"][0] <= p["onset"] <= p["interval"][1]
    assert "predicted onset at n = 256" in summary_lines(out)[-1]


def test_censored_runs_and_too_few_sizes(tmp_path):
    steps = [0, 100, 200, 300]
    folders = [_run(tmp_path / "a", 16, 100, steps), _run(tmp_path / "b", 32, None, steps),
               _run(tmp_path / "c", 32, None, steps)]
    out = summarize(folders)
    assert out["medians"] == {"16": 100.0, "32": None}
    assert "a fit needs two" in out["fit"]["error"]
    assert any("censored" in line for line in summary_lines(out))
    with pytest.raises(ConfigError, match="not a monitored run"):
        run_onset(tmp_path / "missing")


def test_a_real_monitor_folder_is_read(tmp_path):
    law = random_mixture(d=8, components=4)
    train = law.sample(32, torch.Generator().manual_seed(0)).float()
    test = law.sample(128, torch.Generator().manual_seed(1)).float()
    config = MonitorConfig(samples=64, n_boot=50, loss_test=64, loss_train=32, n_levels=3, sampler_steps=10)
    Monitor(EmpiricalDenoiser(train), train, test, tmp_path, DDPMSchedule(), config=config, report=False).update(7)
    assert run_onset(tmp_path) == {"folder": str(tmp_path), "n": 32, "onset": 7, "last_step": 7, "level": 0.05}
