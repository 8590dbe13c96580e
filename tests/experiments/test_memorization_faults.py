"""A saved memorisation run (config.json, records.json, state.pt) is resumed only if every file is intact.

A tiny run is stopped mid-training (the equivalent of a kill: two checkpoints saved), one of its files is
damaged or edited by hand (tensor files through ``easyhard._io.save_tensors`` and records through
``write_checked_json``, so that their checksums are valid and only the schema checks can catch the edit), and
the run is started again: without ``restart`` it stops with a one-line CorruptedFile naming that file and
``--restart``; with ``restart`` its results equal those of an uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest

from easyhard._io import CorruptedFile, json_sha256, load_tensors, read_checked_json, save_tensors, write_checked_json
from easyhard.experiments.memorization import (
    MEMORIZATION, RECORDS_FILE, RECORDS_KIND, SMOKE, _read_records, _write_records, analyse, run_memorization)
from easyhard.experiments.registry import RunContext
from easyhard.train import DivergenceError
from easyhard.train.ensemble import EnsembleTrainConfig

TINY = dataclasses.replace(SMOKE, ns=(4, 8), fit_min_n=4, seeds=1, splits=2, n_test=64, d=4, components=2, width=8,
                           depth=2, time_dim=4, T=50, loss_levels=2, loss_test=8, loss_train=4, mem_samples=8,
                           mem_steps=3, split_samples=8, split_steps=3, score_index=10, score_inputs=4, unit_blocks=4,
                           train=EnsembleTrainConfig(steps=12, batch_size=8, checkpoints=4, first=2))
CONFIG_JSON = json.loads(json.dumps(TINY.to_dict()))


class _Kill(Exception):
    pass


def _kill_after(steps: int):
    """A progress callback that stops the run during training step ``steps + 1``."""
    done = []

    def progress(advance: int) -> None:
        done.append(advance)
        if sum(done) > steps:
            raise _Kill

    return progress


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(results of an uninterrupted run, its folder, the folder of a run killed at step 5)."""
    whole = tmp_path_factory.mktemp("whole")
    reference = run_memorization(TINY, whole)
    killed = tmp_path_factory.mktemp("killed")
    with pytest.raises(_Kill):
        run_memorization(TINY, killed, _kill_after(5))
    assert [r["step"] for r in read_checked_json(killed / RECORDS_FILE, RECORDS_KIND)] == [2, 4]
    assert load_tensors(killed / "state.pt")[1]["step"] == 4
    return reference, whole, killed


def _no_nan(results: dict) -> bool:
    return "NaN" not in json.dumps(results)


def _edit_state(change):
    def apply(out):
        tensors, meta = load_tensors(out / "state.pt")
        change(tensors, meta)
        save_tensors(out / "state.pt", tensors, meta)

    return apply


def _edit_records(change):
    """Records changed and written again as a valid checked file of this config."""
    def apply(out):
        records = read_checked_json(out / RECORDS_FILE, RECORDS_KIND)
        change(records)
        write_checked_json(out / RECORDS_FILE, records, RECORDS_KIND, json_sha256(CONFIG_JSON))

    return apply


def _flip(name: str, offset: int = 0):
    """64 bytes inverted in the middle of the file (for state.pt: inside the first weight's data)."""
    def apply(out):
        path = out / name
        blob = bytearray(path.read_bytes())
        start = len(blob) // 2 + offset
        if name == "state.pt":
            start = bytes(blob).find(load_tensors(path)[0]["model"]["weights.0"].numpy().tobytes()[:64])
        blob[start:start + 64] = bytes(b ^ 0xFF for b in blob[start:start + 64])
        path.write_bytes(bytes(blob))

    return apply


def _write(name: str, data: bytes):
    return lambda out: (out / name).write_bytes(data)


def _truncate(name: str):
    return lambda out: (out / name).write_bytes((out / name).read_bytes()[:-40])


STATE, RECORDS, CONFIG = "state.pt", RECORDS_FILE, "config.json"
FAULTS = {
    "state.pt: 64 bytes flipped": (STATE, _flip(STATE)),
    "state.pt: truncated": (STATE, _truncate(STATE)),
    "state.pt: empty": (STATE, _write(STATE, b"")),
    "state.pt: garbage": (STATE, _write(STATE, bytes(range(256)) * 4)),
    "state.pt: NaN weight": (STATE, _edit_state(lambda t, m: t["model"]["weights.1"].fill_(math.nan))),
    "state.pt: NaN Adam moment": (STATE, _edit_state(lambda t, m: t["optimizer"]["state"][0]["exp_avg"].fill_(
        math.nan))),
    "state.pt: wrong-shape weight": (STATE, _edit_state(lambda t, m: t["model"].update(
        {"weights.0": t["model"]["weights.0"][:, :-1]}))),
    "state.pt: missing weight": (STATE, _edit_state(lambda t, m: t["model"].pop("biases.1"))),
    "state.pt: step beyond the run": (STATE, _edit_state(lambda t, m: m.update(step=13))),
    "state.pt: another config": (STATE, _edit_state(lambda t, m: m["config"].update(lr=0.5))),
    "records.json: 64 bytes flipped": (RECORDS, _flip(RECORDS)),
    "records.json: truncated": (RECORDS, _truncate(RECORDS)),
    "records.json: empty": (RECORDS, _write(RECORDS, b"")),
    "records.json: garbage bytes": (RECORDS, _write(RECORDS, bytes(range(128, 256)))),
    "records.json: missing": (RECORDS, lambda out: (out / RECORDS).unlink()),
    "records.json: plain list (earlier format)": (RECORDS, lambda out: (out / RECORDS).write_text(json.dumps(
        read_checked_json(out / RECORDS, RECORDS_KIND)))),
    "records.json: not a list": (RECORDS, _edit_records(lambda r: r.append(r.pop(0)) or r.insert(0, {"step": "2"}))),
    "records.json: NaN written as text": (RECORDS, _edit_records(lambda r: r[1]["test_loss"][0].__setitem__(0, "nan"))),
    "records.json: wrong-shape measurement": (RECORDS, _edit_records(lambda r: r[0]["similarity"][0].pop())),
    "records.json: ragged measurement": (RECORDS, _edit_records(lambda r: r[1]["test_loss"][2].pop())),
    "records.json: missing measurement": (RECORDS, _edit_records(lambda r: r[1].pop("floor"))),
    "records.json: missing checkpoint": (RECORDS, _edit_records(lambda r: r.pop(0))),
    "records.json: another config": (RECORDS, lambda out: write_checked_json(
        out / RECORDS, read_checked_json(out / RECORDS, RECORDS_KIND), RECORDS_KIND, "0" * 64)),
    "config.json: truncated": (CONFIG, _truncate(CONFIG)),
    "config.json: empty": (CONFIG, _write(CONFIG, b"")),
    "config.json: garbage bytes": (CONFIG, _write(CONFIG, bytes(range(128, 256)))),
    "config.json: a list": (CONFIG, _write(CONFIG, b"[1, 2]\n")),
    "config.json: missing": (CONFIG, lambda out: (out / CONFIG).unlink()),
    "config.json: another config": (CONFIG, lambda out: (out / CONFIG).write_text(json.dumps({**CONFIG_JSON, "d": 5}))),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_an_unusable_saved_file_stops_the_rerun_in_one_line_naming_it(runs, tmp_path, fault):
    shutil.copytree(runs[2], tmp_path, dirs_exist_ok=True)
    name, damage = FAULTS[fault]
    damage(tmp_path)
    with pytest.raises(CorruptedFile) as caught:
        run_memorization(TINY, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path / name)) and "rerun with --restart" in message


@pytest.mark.parametrize("fault", ["state.pt: 64 bytes flipped", "state.pt: NaN weight",
                                   "state.pt: step beyond the run", "records.json: truncated",
                                   "records.json: wrong-shape measurement", "config.json: garbage bytes",
                                   "config.json: another config"])
def test_with_restart_an_unusable_saved_run_is_discarded_and_trained_again(runs, tmp_path, fault):
    """One fault of each kind and file (the discarding is the same for all)."""
    reference, _, killed = runs
    shutil.copytree(killed, tmp_path, dirs_exist_ok=True)
    FAULTS[fault][1](tmp_path)
    results = run_memorization(TINY, tmp_path, restart=True)
    assert results == reference and _no_nan(results)


def test_an_intact_run_resumes_and_later_records_are_dropped(runs, tmp_path):
    """Killed runs resume to the uninterrupted results, also when records.json already holds checkpoints after
    the saved step (measured, then killed before the state was saved); a finished run is only re-analysed."""
    reference, whole, killed = runs
    shutil.copytree(killed, tmp_path / "a")
    assert run_memorization(TINY, tmp_path / "a") == reference
    shutil.copytree(killed, tmp_path / "b")
    shutil.copy(whole / RECORDS_FILE, tmp_path / "b" / RECORDS_FILE)  # steps 2, 4, 7, 12 against a state at 4
    assert run_memorization(TINY, tmp_path / "b") == reference
    state = (tmp_path / "b" / "state.pt").stat().st_mtime_ns
    assert run_memorization(TINY, tmp_path / "b") == reference
    assert (tmp_path / "b" / "state.pt").stat().st_mtime_ns == state
    records = read_checked_json(tmp_path / "b" / RECORDS_FILE, RECORDS_KIND, json_sha256(CONFIG_JSON))
    assert [r["step"] for r in records] == TINY.train.checkpoint_steps()


def test_a_finished_run_is_checked_too_and_the_experiment_passes_restart_on(runs, tmp_path):
    reference, whole, _ = runs
    shutil.copytree(whole, tmp_path / "memorization")
    _edit_state(lambda t, m: t["optimizer"]["state"][1]["exp_avg_sq"].fill_(math.inf))(tmp_path / "memorization")
    with pytest.raises(CorruptedFile, match=r"state.pt is corrupted .*exp_avg_sq holds non-finite"):
        MEMORIZATION.run(TINY, RunContext(out_dir=tmp_path))
    results = MEMORIZATION.run(TINY, RunContext(out_dir=tmp_path, restart=True))
    assert results == {**reference, "config": TINY.to_dict()}


def test_records_keep_non_finite_kl_estimates_and_refuse_other_non_finite_measurements(runs, tmp_path):
    """The KL estimates are inf for collapsed samples (and analyse reads any non-finite one as inf): they are
    saved and read back as such, and a resumed finished run analyses them; any other non-finite measurement
    stops the run (DivergenceError naming it) instead of being saved."""
    _, whole, _ = runs
    config_hash = json_sha256(CONFIG_JSON)
    records = _read_records(whole / RECORDS_FILE, TINY, config_hash, 12)
    records[1]["kl"][0], records[2]["kl"][3] = math.inf, math.nan
    shutil.copytree(whole, tmp_path, dirs_exist_ok=True)
    _write_records(tmp_path / RECORDS_FILE, records, config_hash)
    assert [r["kl"] for r in read_checked_json(tmp_path / RECORDS_FILE, RECORDS_KIND)][1][0] == "inf"
    again = _read_records(tmp_path / RECORDS_FILE, TINY, config_hash, 12)
    assert again[1]["kl"][0] == math.inf and math.isnan(again[2]["kl"][3])
    assert json.dumps(again) == json.dumps(records)
    results = run_memorization(TINY, tmp_path)
    assert json.dumps(results) == json.dumps(analyse(TINY, records)) and results["kl"][0][0][0][1] == math.inf
    records[0]["test_loss"][1][0] = math.inf
    with pytest.raises(DivergenceError, match="measurement test_loss at step 2 is inf"):
        _write_records(tmp_path / RECORDS_FILE, records, config_hash)
