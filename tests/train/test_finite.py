"""The finite-data training loop: its loss, its checkpoint grid, and exact resume with every option at once."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from easyhard._validate import ConfigError
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

    draw = lambda gen, step: data[:, torch.randint(0, 6, (4,), generator=gen)]  # noqa: E731
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
    from easyhard.train import STATE_FILE

    with pytest.raises(_Stop):
        _ensemble_run(tmp_path, stop_at=8)
    tensors, meta = load_tensors(tmp_path / STATE_FILE)
    del tensors["scheduler"]
    save_tensors(tmp_path / STATE_FILE, tensors, meta)
    with pytest.raises(ConfigError, match=r"the state lacks 'scheduler'.*rerun with --restart"):
        _ensemble_run(tmp_path, resume=True)


def _sequences_factor(step: int, steps: int, warm: int) -> float:
    """docs/theory/generalization.md section 8.5: 1 -> 0.5 linearly over ``warm`` steps, then a cosine 0.5 -> 0.1."""
    if step < warm:
        return 1 - 0.5 * step / warm
    return 0.3 + 0.2 * math.cos(math.pi * (step - warm) / (steps - warm))


def test_the_sequences_learning_rate_follows_the_closed_form():
    base = dict(identity={}, steps=100, checkpoints=(100,), lr=1e-3, seed=0)
    loop = LoopConfig(**base, lr_schedule="sequences", lr_warm=20)
    assert [loop.lr_factor(s) for s in (0, 10, 20, 60, 100)] == pytest.approx([1.0, 0.75, 0.5, 0.3, 0.1])
    factors = [loop.lr_factor(s) for s in range(101)]
    assert factors == pytest.approx([_sequences_factor(s, 100, 20) for s in range(101)], abs=1e-15)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    warmed = LoopConfig(**base, lr_schedule="sequences", lr_warm=20, warmup=4)
    assert [warmed.lr_factor(s) for s in (0, 3, 30)] == pytest.approx([0.25 * 1.0, 1 - 0.5 * 3 / 20,
                                                                       _sequences_factor(30, 100, 20)])
    assert [LoopConfig(**base, warmup=4).lr_factor(s) for s in (0, 1, 3, 50)] == [0.25, 0.5, 1.0, 1.0]
    for bad, match in (({"lr_schedule": "cosine"}, "lr_schedule"), ({"lr_schedule": "sequences", "lr_warm": 100},
                       r"lr_warm must be an integer in \[0, 99\]"), ({"lr_warm": -1}, "lr_warm must be an integer >= 0")):
        with pytest.raises(ConfigError, match=match):
            LoopConfig(**base, **bad)


def _scheduled_run(out, stop_at=None, resume=False):
    model = _model()
    data = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(0))
    loop = LoopConfig(identity={"run": 2}, steps=12, checkpoints=(5, 12), lr=1e-2, seed=3, member_axis=True,
                      lr_schedule="sequences", lr_warm=4)

    def measure(step, net, ema):
        if step == stop_at:
            raise _Stop

    train_loop(model, lambda gen, step: data[:, torch.randint(0, 6, (4,), generator=gen)], DDPMSchedule(T=20), loop, out,
               resume, measure)
    return model, loop


def test_the_optimizer_follows_the_schedule_and_resumes_exactly(tmp_path):
    from easyhard._io import load_tensors
    from easyhard.train import STATE_FILE

    whole, loop = _scheduled_run(tmp_path / "a")
    tensors, _ = load_tensors(tmp_path / "a" / STATE_FILE)
    assert tensors["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2 * _sequences_factor(12, 12, 4))
    with pytest.raises(_Stop):
        _scheduled_run(tmp_path / "b", stop_at=12)
    resumed, _ = _scheduled_run(tmp_path / "b", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
