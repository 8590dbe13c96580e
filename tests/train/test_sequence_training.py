"""Training on token sequences: the sequence loss, token splits, the EMA measured at checkpoints, exact resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule
from easyhard.models.transformer import EnsembleTransformer, SequenceTransformerConfig
from easyhard.train.ensemble import EnsembleTrainConfig, Splits, train_ensemble
from easyhard.train.finite import sequence_loss

SCHEDULE = DDPMSchedule(T=50, beta_start=2e-3, beta_end=0.4, index_base=1)


class _Scaled(nn.Module):
    """logits = 3 x_t + bias, remembering its inputs; config.q as the loss reads it."""

    config = SimpleNamespace(q=4)

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-1, 1, 4))

    def logits(self, x_t, i):
        self.seen = (x_t, i)
        return 3 * x_t + self.bias


@pytest.mark.parametrize("member_axis", [True, False])
def test_sequence_loss_noises_one_hots_and_averages_the_token_cross_entropy(member_axis):
    x0 = torch.randint(0, 4, (3, 5, 6) if member_axis else (5, 6), generator=torch.Generator().manual_seed(0))
    model = _Scaled()
    loss = sequence_loss(model, x0, SCHEDULE, torch.Generator().manual_seed(1), member_axis)
    ref = torch.Generator().manual_seed(1)
    lead = x0.shape[:2] if member_axis else x0.shape[:1]
    i = torch.randint(0, 50, lead, generator=ref) + 1
    eps = torch.randn(*x0.shape, 4, generator=ref)
    abar = SCHEDULE.alpha_bar(i).float().reshape(*lead, *[1] * (x0.ndim + 1 - len(lead)))
    x_t = abar.sqrt() * torch.eye(4)[x0] + (1 - abar).sqrt() * eps
    assert torch.equal(model.seen[1], i)
    torch.testing.assert_close(model.seen[0], x_t)
    nll = torch.logsumexp(3 * x_t + model.bias, -1) - (3 * x_t + model.bias).gather(-1, x0[..., None])[..., 0]
    torch.testing.assert_close(loss, nll.mean(tuple(range(1, x0.ndim))) if member_axis else nll.mean())


def test_sequence_loss_draws_every_index_of_the_schedule():
    model = _Scaled()
    sequence_loss(model, torch.zeros(4, 500, 2, dtype=torch.long), DDPMSchedule(T=7, index_base=1),
                  torch.Generator().manual_seed(0))
    assert set(model.seen[1].unique().tolist()) == set(range(1, 8))


def test_a_network_with_zero_logits_scores_log_q_per_member():
    net = EnsembleTransformer(SequenceTransformerConfig(2, 3, 5, d_model=8, heads=2), torch.Generator())
    with torch.no_grad():
        net.w_out.zero_()
    x0 = torch.randint(0, 5, (2, 4, 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sequence_loss(net, x0, SCHEDULE, torch.Generator()), torch.full((2,), math.log(5)))


def test_splits_hold_token_sequences():
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randint(0, 6, (n, 8), generator=gen) for n in (3, 7)]
    splits = Splits.stack(parts)
    assert splits.data.dtype == torch.long and splits.data.shape == (2, 7, 8)
    for mode in ("random", "tile"):
        x0 = splits.draw(40, gen, mode)
        assert x0.dtype == torch.long and x0.shape == (2, 40, 8)
        for e, part in enumerate(parts):
            assert (x0[e][:, None] == part[None]).all(-1).any(-1).all()  # every drawn row is in member e's split
    torch.testing.assert_close(splits.draw(21, gen, "tile")[1], parts[1].repeat(3, 1), rtol=0, atol=0)


def test_ema_decay_is_validated_and_reaches_the_loop():
    assert EnsembleTrainConfig().ema_decay is None and EnsembleTrainConfig().loop(torch.device("cpu")).ema_decay is None
    assert EnsembleTrainConfig(ema_decay=0.99).loop(torch.device("cpu")).ema_decay == 0.99
    for bad in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="ema_decay must"):
            EnsembleTrainConfig(ema_decay=bad)


class _Stop(Exception):
    pass


def _network() -> EnsembleTransformer:
    config = SequenceTransformerConfig(2, 4, 3, d_model=8, heads=2, layers=1, ff=16, time_dim=4)
    return EnsembleTransformer(config, torch.Generator().manual_seed(1))


def _run(out, stop_at=None, resume=False, warmup=False):
    """A small transformer ensemble on token splits with an EMA: (model, {step: measured EMA weights},
    [live weights after every step], losses)."""
    gen = torch.Generator().manual_seed(0)
    splits = Splits.stack([torch.randint(0, 3, (n, 4), generator=gen) for n in (5, 8)])
    model = _network()
    train = EnsembleTrainConfig(steps=30, batch_size=8, lr=1e-2, checkpoints=4, first=4, ema_decay=0.8,
                                ema_warmup=warmup)
    measured, live = {}, []

    def measure(step, net):
        assert net is not model and not net.training
        measured[step] = [p.detach().clone() for p in net.parameters()]
        if step == stop_at:
            raise _Stop

    def progress(_):
        assert model.training  # back in training mode after each measurement
        live.append([p.detach().clone() for p in model.parameters()])

    losses = train_ensemble(model, splits, SCHEDULE, train, out, resume, measure, progress, loss=sequence_loss)
    return model, measured, live, losses


def test_checkpoints_measure_the_ema_and_resume_is_exact(tmp_path):
    whole, measured, live, losses = _run(tmp_path / "a")
    assert sorted(measured) == [4, 8, 15, 30] and len(losses) == 4
    assert all(math.isfinite(x) for x in losses)
    # the measured network is the EMA e_s = 0.8 e_{s-1} + 0.2 w_s of the live weights, e_0 = w_0
    ema = [p.detach().clone() for p in _network().parameters()]
    for step, weights in enumerate(live, start=1):
        ema = [0.8 * e + 0.2 * w for e, w in zip(ema, weights)]
        if step in measured:
            for a, b in zip(measured[step], ema):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(_Stop):
        _run(tmp_path / "b", stop_at=15)
    resumed, again, _, resumed_losses = _run(tmp_path / "b", resume=True)
    assert sorted(again) == [15, 30] and resumed_losses == losses
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(measured[30], again[30]))


def test_ensemble_config_passes_the_learning_rate_schedule_to_the_loop():
    from easyhard._validate import ConfigError
    from easyhard.train.ensemble import EnsembleTrainConfig

    config = EnsembleTrainConfig(steps=100, first=10, lr_schedule="sequences", lr_warm=20)
    loop = config.loop(torch.device("cpu"))
    assert (loop.lr_schedule, loop.lr_warm) == ("sequences", 20)
    assert loop.lr_factor(0) == pytest.approx(1.0) and loop.lr_factor(20) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="lr_schedule"):
        EnsembleTrainConfig(steps=100, first=10, lr_schedule="step")
    with pytest.raises(ConfigError, match="lr_warm"):
        EnsembleTrainConfig(steps=100, first=10, lr_schedule="sequences", lr_warm=100)


def test_ema_warmup_follows_its_closed_form_and_resumes_exactly(tmp_path):
    """With ema_warmup the decay after step s is min(0.8, (1 + s) / (10 + s)): 0.1538.. at s = 1, 0.8 from s = 26."""
    whole, measured, live, _ = _run(tmp_path / "a", warmup=True)
    ema = [p.detach().clone() for p in _network().parameters()]
    for step, weights in enumerate(live, start=1):
        decay = min(0.8, (1 + step) / (10 + step))
        ema = [decay * e + (1 - decay) * w for e, w in zip(ema, weights)]
        if step in measured:
            for a, b in zip(measured[step], ema):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain = _run(tmp_path / "c")[1]
    assert not torch.allclose(plain[4][0], measured[4][0])  # the warm-up changes the early average
    with pytest.raises(_Stop):
        _run(tmp_path / "b", stop_at=8, warmup=True)
    resumed, again, _, _ = _run(tmp_path / "b", resume=True, warmup=True)
    assert all(torch.equal(a, b) for a, b in zip(measured[30], again[30]))
