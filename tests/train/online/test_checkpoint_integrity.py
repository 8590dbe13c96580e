"""An online-SGD checkpoint is used only when intact and ours (issue 14): every corruption, whether of the bytes
(caught by the checksum) or of the content with a recomputed checksum (caught by the schema), is refused with one
line naming the file, and an unmodified checkpoint still resumes to the uninterrupted run's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easyhard._io import CorruptedFile, load_tensors, save_tensors
from easyhard.data import MixedCumulantModel
from easyhard.models import Committee
from easyhard.train import DivergenceError, OnlineSGDConfig, run_online_sgd
from easyhard.train.online.numba_engine import NumbaEngine

D, SEEDS = 16, [3, 4]
NET = Committee(d=D, second_layer="untied")
DATA = MixedCumulantModel.create(d=D, beta_u=5.0, beta_v=5.0, beta_m=0.5, coupling="sign")
# finite-n mode: the checkpoint also holds training counts and pass orders; records at ... 1667, 2305, ...
CFG = OnlineSGDConfig(steps=5000, dtype="float64", n_logs=12, n_samples=7, engine="numba")


class _Interrupt(Exception):
    pass


def _interrupt_after(steps: int):
    done = [0]

    def progress(k):
        done[0] += k
        if done[0] >= steps:
            raise _Interrupt

    return progress


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[bytes, object]:
    """(bytes of the checkpoint of a run killed at step 3000, written at the chunk boundary 2048; the whole run)."""
    ckpt = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    with pytest.raises(_Interrupt):
        run_online_sgd(NET, DATA, CFG, SEEDS, progress=_interrupt_after(3000), checkpoint=ckpt, checkpoint_every=0)
    return ckpt.read_bytes(), run_online_sgd(NET, DATA, CFG, SEEDS)


def _assert_refused(path, match: str) -> None:
    """The resume is refused with one line that names the file and says how to start over; the file is kept."""
    with pytest.raises(CorruptedFile, match=match) as err:
        run_online_sgd(NET, DATA, CFG, SEEDS, checkpoint=path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "delete it to start the run over" in msg
    assert path.exists()


def _flip_bit_in(blob: bytes, data: bytes) -> bytes:
    """``blob`` with one bit flipped in the middle of the (unique) byte string ``data`` it contains."""
    at = blob.find(data)
    assert at >= 0 and blob.find(data, at + 1) < 0
    out = bytearray(blob)
    out[at + len(data) // 2] ^= 0x10
    return bytes(out)


def test_unmodified_checkpoint_resumes_to_the_same_numbers(saved, tmp_path):
    blob, whole = saved
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(blob)
    resumed = run_online_sgd(NET, DATA, CFG, SEEDS, checkpoint=ckpt)
    assert not ckpt.exists()
    for name in ("overlaps", "loss", "first_hit", "recovered", "training_counts"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))
    for k in whole.params:
        assert torch.equal(resumed.params[k], whole.params[k])


@pytest.mark.parametrize("damage", ["bit flip in a loss record", "bit flip in the weights", "truncated", "garbage"])
def test_damaged_bytes_are_refused(saved, tmp_path, damage):
    """The issue's case: a bit flip in a loss record (which made it read -0.054 instead of 82.08) is caught by the
    checksum, as are other byte-level damages."""
    blob, _ = saved
    tensors, _ = load_tensors(_write(tmp_path / "ref.ckpt", blob))
    if damage.startswith("bit flip"):
        name = "records.loss" if "loss" in damage else "runner.W"
        blob = _flip_bit_in(blob, tensors[name].numpy().tobytes())
    elif damage == "truncated":
        blob = blob[:len(blob) // 2]
    else:
        blob = np.random.default_rng(0).integers(0, 256, len(blob), dtype=np.uint8).tobytes()
    _assert_refused(_write(tmp_path / "run.ckpt", blob), "corrupted or not ours")


def _write(path, blob: bytes):
    path.write_bytes(blob)
    return path


def _nan_loss(t, m):
    t["records.loss"][0, 0] = float("nan")


def _nan_weight(t, m):
    t["runner.W"][1, 0, 3] = float("nan")


def _negative_loss(t, m):
    t["records.loss"][4, 1] = -0.054


def _overlap_above_one(t, m):
    t["records.overlaps"][2, 0, 0, 1] = 1.5


def _peak_above_bound(t, m):
    t["runner.peak"][0] = 1e30


def _start_far_out(t, m):
    m["start"] = 10**9


def _start_off_boundary(t, m):
    m["start"] = 2000


def _rec_mismatch(t, m):
    m["rec"] += 1


def _start_missing(t, m):
    del m["start"]


def _wrong_shape(t, m):
    t["runner.W"] = t["runner.W"][:, :, :-1].clone()


def _wrong_dtype(t, m):
    t["runner.W"] = t["runner.W"].float()


def _missing_tensor(t, m):
    del t["runner.states"]


def _extra_tensor(t, m):
    t["runner.extra"] = torch.zeros(2)


def _counts_off(t, m):
    t["records.counts"][0, 0] += 1


def _order_not_a_permutation(t, m):
    t["draws.perm.0"][0] = t["draws.perm.0"][1]


def _position_outside_pass(t, m):
    t["draws.pos"][0] = 99


EDITS = {
    "NaN loss record": (_nan_loss, "non-finite values in the records"),
    "NaN weight": (_nan_weight, "non-finite values in runner.W"),
    "negative loss record": (_negative_loss, "out of range"),
    "overlap above one": (_overlap_above_one, "out of range"),
    "peak above the divergence bound": (_peak_above_bound, "runner.peak above"),
    "start=10**9": (_start_far_out, "start=1000000000 is not a chunk boundary"),
    "start off a chunk boundary": (_start_off_boundary, "start=2000 is not a chunk boundary"),
    "rec not matching start": (_rec_mismatch, "rec=14 does not match start=2048"),
    "start missing": (_start_missing, "no integer start"),
    "wrong shape": (_wrong_shape, r"runner.W is torch.float64 \(2, 1, 15\), expected torch.float64 \(2, 1, 16\)"),
    "wrong dtype": (_wrong_dtype, "runner.W is torch.float32"),
    "missing tensor": (_missing_tensor, "missing tensor runner.states"),
    "extra tensor": (_extra_tensor, "unexpected entry runner.extra"),
    "counts not summing to start": (_counts_off, "do not sum to the 2048 steps"),
    "order not a permutation": (_order_not_a_permutation, "draws.perm.0 is not an order"),
    "position outside the pass": (_position_outside_pass, "draws.pos 99 outside the pass"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_hand_edited_checkpoint_with_valid_checksum_is_refused(saved, tmp_path, edit):
    """Content edited and saved again with a valid checksum (easyhard._io.save_tensors) fails the schema check."""
    blob, _ = saved
    ckpt = _write(tmp_path / "run.ckpt", blob)
    tensors, meta = load_tensors(ckpt)
    change, match = EDITS[edit]
    change(tensors, meta)
    save_tensors(ckpt, tensors, meta)
    _assert_refused(ckpt, match)


def test_a_diverged_state_is_never_checkpointed(monkeypatch, tmp_path):
    """A blow-up after the record at step 1667 and before the chunk boundary 2048 is not saved there; the run stops
    at the next record (2305) and leaves no checkpoint."""
    run = NumbaEngine.run

    def blow_up_after_1800(self, i0, i1, step0):
        run(self, i0, i1, step0)
        if step0 + i1 > 1800:
            self.peak[:] = np.inf

    monkeypatch.setattr(NumbaEngine, "run", blow_up_after_1800)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(DivergenceError, match="by step 2305 in members"):
        run_online_sgd(NET, DATA, CFG, SEEDS, checkpoint=ckpt, checkpoint_every=0)
    assert not ckpt.exists()
