"""Ensemble training: members learn independently, exact resume, divergence is reported."""

from __future__ import annotations

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.train import DivergenceError
from easyhard.train.ensemble import EnsembleTrainConfig, Splits, train_ensemble


def _setup(lr=1e-3):
    gen = torch.Generator().manual_seed(0)
    splits = Splits.stack([torch.randn(n, 3, generator=gen) for n in (4, 9)])
    model = EnsembleMLP(EnsembleConfig(2, 3, width=16, depth=2, time_dim=4), torch.Generator().manual_seed(1))
    return splits, model, EnsembleTrainConfig(steps=40, batch_size=8, lr=lr, checkpoints=4, first=5)


def test_draws_stay_inside_each_members_split():
    splits, _, _ = _setup()
    x0 = splits.draw(500, torch.Generator().manual_seed(3))
    for e in range(2):
        member = splits.member(e)
        assert (torch.cdist(x0[e], member, compute_mode="donot_use_mm_for_euclid_dist").min(1).values == 0).all()
        assert len(torch.unique(x0[e], dim=0)) == len(member)  # every point drawn at least once in 500 tries


def test_resume_equals_uninterrupted_run(tmp_path):
    splits, model, config = _setup()
    schedule = DDPMSchedule()
    seen = []
    losses = train_ensemble(model, splits, schedule, config, tmp_path / "a", on_checkpoint=lambda s, m: seen.append(s))
    assert seen == config.checkpoint_steps() and len(losses) == len(seen)
    # interrupted after the second checkpoint, then resumed
    splits, other, _ = _setup()

    class Stop(Exception):
        pass

    def stop(step, _):
        if step == seen[1]:
            raise Stop

    with pytest.raises(Stop):
        train_ensemble(other, splits, schedule, config, tmp_path / "b", on_checkpoint=stop)
    # the state is written after the measurement, so the run resumes from the checkpoint before the stop
    splits, resumed, _ = _setup()
    train_ensemble(resumed, splits, schedule, config, tmp_path / "b", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    with pytest.raises(ConfigError, match="exists"):
        train_ensemble(resumed, splits, schedule, config, tmp_path / "b")


def test_divergence_is_reported():
    splits, model, config = _setup(lr=10.0)
    with torch.no_grad():
        model.weights[0].mul_(1e30)
    with pytest.raises(DivergenceError, match="diverged"):
        train_ensemble(model, splits, DDPMSchedule(), config, "/nonexistent-not-written")


def test_tiled_batches_hold_every_point_equally_often():
    splits, _, _ = _setup()
    x0 = splits.draw(36, torch.Generator(), mode="tile")
    for e, n in enumerate((4, 9)):
        torch.testing.assert_close(x0[e], splits.member(e).repeat(36 // n, 1), rtol=0, atol=0)


def test_tiled_batches_continue_across_steps_when_the_split_does_not_divide_the_batch():
    """n = 9 and batch 6: the cursor continues, so steps 0-2 (lcm 18 = 3 batches) hold each point exactly twice,
    in order; n = 4 is not divisible either (6 mod 4 = 2) and cycles over 2 steps (lcm 12)."""
    splits, _, _ = _setup()
    steps = [splits.draw(6, torch.Generator(), mode="tile", step=s) for s in range(6)]
    for e, n in enumerate((4, 9)):
        member = splits.member(e)
        drawn = torch.cat([x[e] for x in steps])  # (36, 3): points 0, 1, 2, ... in order, 36 / n times each
        torch.testing.assert_close(drawn, member.repeat(36 // n, 1), rtol=0, atol=0)
    # a large step gives the same batch as its residue: no overflow of the cursor
    torch.testing.assert_close(splits.draw(6, torch.Generator(), "tile", step=3 + 36 * 10**12)[1], steps[3][1],
                               rtol=0, atol=0)
