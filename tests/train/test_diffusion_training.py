"""Diffusion training on a finite dataset: checkpoints, exact resume, refusal of bad states."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule
from easyhard.train.diffusion import DiffusionTrainConfig, load_snapshot, train_diffusion

SCHEDULE = DDPMSchedule(T=100)


class _TinyDenoiser(nn.Module):
    """eps_hat = MLP([x_t, i/T]) on flattened inputs: enough to learn a Gaussian's Wiener filter."""

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d + 1, 32), nn.SiLU(), nn.Linear(32, d))

    def forward(self, x_t, i, schedule):
        flat = x_t.reshape(len(x_t), -1)
        out = self.net(torch.cat([flat, (i.float() / schedule.T)[:, None]], 1))
        return out.reshape(x_t.shape)


def _data(n=512, d=6):
    g = torch.Generator().manual_seed(0)
    return 0.3 * torch.randn((n, 1, 2, d // 2), generator=g)


def _config(**kw):
    return DiffusionTrainConfig(**{"steps": 300, "batch_size": 32, "lr": 3e-3, "warmup": 10, "first": 10,
                                   "per_decade": 3, "ema_decay": 0.9, **kw})


def test_checkpoint_steps_are_log_spaced():
    steps = DiffusionTrainConfig(steps=10_000, first=100, per_decade=10).checkpoint_steps()
    assert steps[0] == 0 and steps[1] == 100 and steps[-1] == 10_000 and len(steps) == 22
    assert steps == sorted(set(steps))


class _Stop(Exception):
    pass


def test_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    data = _data()
    whole_model = _TinyDenoiser(6)
    whole = train_diffusion(whole_model, data, SCHEDULE, _config(), tmp_path / "a")
    assert whole.train_loss[-1] < whole.train_loss[0]  # it learns

    def stop_at(step, count=[0]):  # noqa: B006
        count[0] += step
        if count[0] == 150:
            raise _Stop

    with pytest.raises(_Stop):
        train_diffusion(_TinyDenoiser(6), data, SCHEDULE, _config(), tmp_path / "b", progress=stop_at)
    resumed_model = _TinyDenoiser(6, seed=99)  # different init: everything must come from the state
    resumed = train_diffusion(resumed_model, data, SCHEDULE, _config(), tmp_path / "b", resume=True)
    for a, b in zip(whole_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.checkpoint_steps == whole.checkpoint_steps
    assert [p.split("/")[-1] for p in resumed.snapshots] == [p.split("/")[-1] for p in whole.snapshots]
    ema_a = load_snapshot(whole.snapshots[-1], _TinyDenoiser(6), ema=True)
    ema_b = load_snapshot(resumed.snapshots[-1], _TinyDenoiser(6), ema=True)
    for a, b in zip(ema_a.state_dict().values(), ema_b.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_or_missing_state_is_an_error_never_a_silent_restart(tmp_path):
    data = _data()
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_diffusion(_TinyDenoiser(6), data, SCHEDULE, _config(steps=20), tmp_path / "x", resume=True)
    train_diffusion(_TinyDenoiser(6), data, SCHEDULE, _config(steps=20), tmp_path / "y")
    with pytest.raises(ConfigError, match="exists"):
        train_diffusion(_TinyDenoiser(6), data, SCHEDULE, _config(steps=20), tmp_path / "y")
    with pytest.raises(ConfigError, match="another training config"):
        train_diffusion(_TinyDenoiser(6), data, SCHEDULE, _config(steps=40), tmp_path / "y", resume=True)
    state = tmp_path / "y" / "state.pt"
    state.write_bytes(state.read_bytes()[:50])
    with pytest.raises(ConfigError, match="is corrupted or not ours"):
        train_diffusion(_TinyDenoiser(6), data, SCHEDULE, _config(steps=20), tmp_path / "y", resume=True)


def test_config_errors_name_the_parameter():
    for kw, match in (({"lr": 0}, "lr"), ({"optimizer": "sgd"}, "optimizer"), ({"ema_decay": 1.0}, "ema_decay"),
                      ({"device": "tpu"}, "device")):
        with pytest.raises(ConfigError, match=match):
            DiffusionTrainConfig(**kw)
