"""A saved training state (state.pt of the finite-data loop) is used only if it is intact and fits the run.

A run with every option that is saved (warm-up, clipping, EMA, snapshots) is stopped after a checkpoint; its
state.pt is then damaged (bytes flipped, truncated, emptied, replaced) or edited by hand and written again with
a valid checksum through ``easyhard._io.save_tensors``, so that only the schema checks can catch the edit. The
resume must stop with a one-line CorruptedFile naming the file and ``--restart``, before anything is loaded.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from easyhard._io import CorruptedFile, load_tensors, save_tensors
from easyhard.diffusion import DDPMSchedule
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.train import STATE_FILE, LoopConfig, checkpoint_grid, train_loop
from easyhard.train.finite import check_state

LOOP = LoopConfig(identity={"run": 1}, steps=30, checkpoints=(0, *checkpoint_grid(4, 30, 4)), lr=1e-2, seed=3,
                  warmup=5, grad_clip=0.1, ema_decay=0.8, member_axis=True, snapshots=True)


class _Stop(Exception):
    pass


def _model() -> EnsembleMLP:
    return EnsembleMLP(EnsembleConfig(2, 3, width=8, depth=2, time_dim=4), torch.Generator().manual_seed(1))


def _run(out, resume=False, stop_at=None) -> EnsembleMLP:
    """Train (or resume) the run in ``out``; ``stop_at``: stop while measuring that checkpoint."""
    model = _model()
    data = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(0))

    def measure(step, net, ema):
        if step == stop_at:
            raise _Stop

    draw = lambda gen, step: data[:, torch.randint(0, 6, (4,), generator=gen)]  # noqa: E731
    train_loop(model, draw, DDPMSchedule(T=20), LOOP, out, resume, measure)
    return model


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped while measuring step 15: its state is that of step 8."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(_Stop):
        _run(out, stop_at=15)
    return out


def _edit(change):
    """A hand edit of (tensors, meta), saved again with a valid checksum."""

    def apply(path):
        tensors, meta = load_tensors(path)
        change(tensors, meta)
        save_tensors(path, tensors, meta)

    return apply


def _flip_tensor_bytes(path):
    """64 bytes of the first weight's data inverted inside the file (the issue's bit flip)."""
    blob = bytearray(path.read_bytes())
    weight = load_tensors(path)[0]["model"]["weights.0"]
    start = bytes(blob).find(weight.numpy().tobytes()[:64])
    assert start > 0
    blob[start:start + 64] = bytes(b ^ 0xFF for b in blob[start:start + 64])
    path.write_bytes(bytes(blob))


def _set(tensors, key, index, value):
    tensors[key][index] = value


FAULTS = {
    # damaged files: the checksum or the reader catches them
    "bit flip in tensor data": (_flip_tensor_bytes, "checksum mismatch"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "corrupted"),
    "empty": (lambda p: p.write_bytes(b""), "corrupted"),
    "garbage": (lambda p: p.write_bytes(bytes(range(256)) * 8), "corrupted"),
    # hand edits with a valid checksum: the schema catches them
    "NaN weight": (_edit(lambda t, m: t["model"]["weights.1"].view(-1).__setitem__(3, math.nan)),
                   "model.weights.1 holds non-finite"),
    "inf EMA weight": (_edit(lambda t, m: t["ema"]["biases.0"].fill_(math.inf)), "ema.biases.0 holds non-finite"),
    "NaN Adam moment": (_edit(lambda t, m: t["optimizer"]["state"][2]["exp_avg"].fill_(math.nan)),
                        "optimizer.state[2].exp_avg holds non-finite"),
    "negative second moment": (_edit(lambda t, m: t["optimizer"]["state"][0]["exp_avg_sq"].fill_(-1.0)),
                               "negative second moment"),
    "wrong-shape weight": (_edit(lambda t, m: _set(t, "model", "weights.0", torch.zeros(2, 7, 9))),
                           "model.weights.0 is torch.float32 (2, 7, 9), expected torch.float32 (2, 7, 8)"),
    "wrong-dtype weight": (_edit(lambda t, m: _set(t, "model", "biases.2", t["model"]["biases.2"].double())),
                           "model.biases.2 is torch.float64"),
    "missing weight": (_edit(lambda t, m: t["model"].pop("weights.2")), "model lacks 'weights.2'"),
    "extra weight": (_edit(lambda t, m: _set(t, "model", "weights.9", torch.zeros(1))), "unexpected 'weights.9'"),
    "missing scheduler": (_edit(lambda t, m: t.pop("scheduler")), "the state lacks 'scheduler'"),
    "missing Adam moment": (_edit(lambda t, m: t["optimizer"]["state"][1].pop("exp_avg_sq")),
                            "optimizer.state[1] lacks 'exp_avg_sq'"),
    "wrong-shape generator": (_edit(lambda t, m: t.update(generator=t["generator"][:-1])),
                              "generator is torch.uint8"),
    "learning rate": (_edit(lambda t, m: t["optimizer"]["param_groups"][0].__setitem__("lr", 0.5)),
                      "lr is not the learning rate of step 8"),
    "optimizer setting": (_edit(lambda t, m: t["optimizer"]["param_groups"][0].__setitem__("eps", 0.1)),
                          "param_groups[0] holds other settings"),
    "step beyond the run": (_edit(lambda t, m: m.update(step=31)), "step 31 is not an integer in [0, 30]"),
    "negative step": (_edit(lambda t, m: m.update(step=-1)), "step -1 is not"),
    "fractional step": (_edit(lambda t, m: m.update(step=8.5)), "step 8.5 is not"),
    "step of another checkpoint": (_edit(lambda t, m: m.update(step=4, log={k: v[:1] for k, v in m["log"].items()})),
                                   "optimizer.state[0].step is 8, not an integer in [1, 4]"),
    "step without its log": (_edit(lambda t, m: m.update(step=15)), "checkpoint steps do not end at step 15"),
    "NaN logged loss": (_edit(lambda t, m: m["log"]["train_loss"].__setitem__(0, math.nan)), "non-finite"),
    "scheduler step": (_edit(lambda t, m: t["scheduler"].update(last_epoch=7)), "scheduler is not"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_damaged_or_edited_state_is_refused_in_one_line_before_anything_is_loaded(interrupted, tmp_path, fault):
    shutil.copytree(interrupted, tmp_path, dirs_exist_ok=True)
    state = tmp_path / STATE_FILE
    damage, reason = FAULTS[fault]
    damage(state)
    model = _model()
    with pytest.raises(CorruptedFile) as caught:
        check_state(state, model, LOOP)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(state)) and reason in message
    assert message.endswith("rerun with --restart to discard it and start over")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), _model().parameters()))  # nothing loaded
    with pytest.raises(CorruptedFile, match="--restart"):  # the loop itself runs the same checks
        _run(tmp_path, resume=True)


def test_another_config_is_refused_and_a_valid_state_resumes_exactly(interrupted, tmp_path):
    """The checks pass an intact state, whose resume still ends with the weights of an uninterrupted run."""
    shutil.copytree(interrupted, tmp_path / "b")
    assert check_state(tmp_path / "b" / STATE_FILE, _model(), LOOP) == 8
    resumed, whole = _run(tmp_path / "b", resume=True), _run(tmp_path / "a")
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    other = LoopConfig(**{**LOOP.__dict__, "identity": {"run": 2}})
    with pytest.raises(CorruptedFile, match=r"another training config\); use a new --out, or rerun with --restart"):
        check_state(tmp_path / "b" / STATE_FILE, _model(), other)
