"""The finite-data training loop: its loss, its checkpoint grid, and exact resume with every option at once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from easyhard.diffusion import DDPMSchedule
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.train import LoopConfig, checkpoint_grid, denoising_loss, load_snapshot, train_loop


class _Zero(nn.Module):
    """eps_hat = 0, remembering its inputs."""

    def forward(self, x_t, i, schedule):
        self.seen = (x_t, i)
        return torch.zeros_like(x_t)


@pytest.mark.parametrize("member_axis", [False, True])
def test_loss_noises_every_example_and_averages_per_member(member_axis):
    """x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps with one index per example; with eps_hat = 0 the loss is
    mean(eps^2) over a member's examples (member axis) or over everything."""
    schedule = DDPMSchedule(T=50, index_base=1)
    x0 = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    model = _Zero()
    loss = denoising_loss(model, x0, schedule, torch.Generator().manual_seed(1), member_axis)
    ref = torch.Generator().manual_seed(1)
    lead = (3, 5) if member_axis else (3,)
    i = torch.randint(0, 50, lead, generator=ref) + 1
    eps = torch.randn(x0.shape, generator=ref)
    abar = torch.as_tensor(schedule.alphas_bar)[i - 1].float().reshape(*lead, *[1] * (3 - len(lead)))
    assert torch.equal(model.seen[1], i)
    torch.testing.assert_close(model.seen[0], abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    torch.testing.assert_close(loss, (eps**2).mean((1, 2)) if member_axis else (eps**2).mean())


def test_checkpoint_grid_is_log_spaced_and_ends_at_the_last_step():
    grid = checkpoint_grid(10, 10_000, 7)
    assert grid == [10, 32, 100, 316, 1000, 3162, 10_000]
    assert checkpoint_grid(5, 12, 40) == list(range(5, 13))  # deduplicated: at most one checkpoint per step
    assert checkpoint_grid(100, 40, 9) == [40]


class _Stop(Exception):
    pass


def _model() -> EnsembleMLP:
    return EnsembleMLP(EnsembleConfig(2, 3, width=8, depth=2, time_dim=4), torch.Generator().manual_seed(1))


def _ensemble_run(out, stop_at=None, resume=False):
    """An ensemble (member axis) with warm-up, clipping, an EMA and snapshots: (model, measured steps, result)."""
    model = _model()
    data = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(0))
    loop = LoopConfig(identity={"run": 1}, steps=30, checkpoints=(0, *checkpoint_grid(4, 30, 4)), lr=1e-2, seed=3,
                      warmup=5, grad_clip=0.1, ema_decay=0.8, member_axis=True, snapshots=True)
    measured = []

    def measure(step, net, ema):
        measured.append(step)
        if step == stop_at:
            raise _Stop

    draw = lambda gen: data[:, torch.randint(0, 6, (4,), generator=gen)]  # noqa: E731
    result = train_loop(model, draw, DDPMSchedule(T=20), loop, out, resume, measure)
    return model, measured, result


def test_every_option_resumes_exactly_and_an_interrupted_measurement_is_repeated(tmp_path):
    whole, measured, result = _ensemble_run(tmp_path / "a")
    assert measured == result.checkpoint_steps == [0, 4, 8, 15, 30] and len(result.train_loss) == 4
    with pytest.raises(_Stop):
        _ensemble_run(tmp_path / "b", stop_at=8)
    resumed, again, _ = _ensemble_run(tmp_path / "b", resume=True)
    assert again == [8, 15, 30]  # the state is saved after the measurement: step 8 is measured again
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    ema_a, ema_b = (load_snapshot(d / "snapshots" / "step-0000030.pt", _model(), ema=True) for d in
                    (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(a, b) for a, b in zip(ema_a.parameters(), ema_b.parameters()))
    assert not torch.equal(ema_a.weights[0], whole.weights[0])  # the EMA is not the model


def test_a_state_of_another_format_is_refused_in_one_line(tmp_path):
    """A state without the scheduler (the ensemble trainer's earlier format) is refused, not half-loaded."""
    from easyhard._io import load_tensors, save_tensors
    from easyhard._validate import ConfigError
    from easyhard.train import STATE_FILE

    with pytest.raises(_Stop):
        _ensemble_run(tmp_path, stop_at=8)
    tensors, meta = load_tensors(tmp_path / STATE_FILE)
    del tensors["scheduler"]
    save_tensors(tmp_path / STATE_FILE, tensors, meta)
    with pytest.raises(ConfigError, match=r"the state lacks 'scheduler'.*rerun with --restart"):
        _ensemble_run(tmp_path, resume=True)
