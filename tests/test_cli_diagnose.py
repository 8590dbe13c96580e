"""`easyhard diagnose`: copies and fresh samples from PNG, .npy and .pt folders; one-line errors, exit code 2."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from easyhard.cli import main


def _run(capsys, *args):
    code = main(["diagnose", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _png_folder(folder, images):
    from PIL import Image

    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return str(folder)


@pytest.fixture()
def pixels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8), rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)


def test_png_copies_give_f_mem_one_and_a_report(tmp_path, capsys, pixels):
    train, test = pixels
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "--samples", _png_folder(tmp_path / "s", train[::2]),
                             "--train", _png_folder(tmp_path / "t", train), "--test", _png_folder(tmp_path / "u", test),
                             "--out", str(out), "--n-boot", "100")
    assert code == 0, err
    assert "f_mem(d1/d2 < 1/3) = 1.0000 [1.0000, 1.0000]" in stdout and f"report: {out / 'report.md'}" in stdout
    assert "flag copies: 15 of 15 samples" in stdout and "15 samples of shape (3, 6, 6)" in err
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", "run.json", "diagnose.png"}
    results = json.loads((out / "results.json").read_text())
    assert [m["value"] for m in results["memorization"]] == [1.0, 1.0, 1.0]
    assert [c["train"] for c in results["closest"][:3]] == [0, 2, 4]
    assert json.loads((out / "run.json").read_text())["config"]["n_boot"] == 100


def test_npy_and_pt_fresh_samples_give_f_mem_zero(tmp_path, capsys):
    rng = np.random.default_rng(1)
    (tmp_path / "t").mkdir()
    (tmp_path / "s").mkdir()
    np.save(tmp_path / "t" / "train.npy", rng.normal(size=(40, 2, 4, 4)).astype(np.float32))
    for i in range(25):
        torch.save(torch.from_numpy(rng.normal(size=(2, 4, 4))), tmp_path / "s" / f"{i:02d}.pt")
    code, stdout, err = _run(capsys, "--samples", str(tmp_path / "s"), "--train", str(tmp_path / "t"),
                             "--out", str(tmp_path / "out"), "--thresholds", "0.25,0.333333,0.5", "--n-boot", "50",
                             "--max-samples", "20")
    assert code == 0, err
    assert "f_mem(d1/d2 < 1/3) = 0.0000 [0.0000, 0.0000], Wilson upper 0.16" in stdout and "flag" not in stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["inputs"]["samples"]["n"] == 20 and results["inputs"]["samples"]["loaded"] == 25
    assert results["split"] is None


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class _Plain:
    pass


def _bad_folders(tmp_path):
    rng = np.random.default_rng(2)
    good = tmp_path / "good"
    good.mkdir()
    np.save(good / "x.npy", rng.normal(size=(10, 3, 4, 4)))
    empty, mixed, shapes, plain, evil = (tmp_path / n for n in ("empty", "mixed", "shapes", "plain", "evil"))
    for folder in (empty, mixed, shapes, plain, evil):
        folder.mkdir()
    np.save(mixed / "a.npy", np.zeros((2, 3, 4, 4)))
    torch.save(torch.zeros(2, 3, 4, 4), mixed / "b.pt")
    np.save(shapes / "x.npy", rng.normal(size=(10, 1, 4, 4)))
    torch.save(_Plain(), plain / "x.pt")
    torch.save(_Payload(tmp_path / "pwned"), evil / "x.pt")
    return {"missing": (tmp_path / "nope", "no such folder"), "empty": (empty, "holds no images or arrays"),
            "mixed": (mixed, "mixes file kinds"), "shapes": (shapes, "items of one shape"),
            "plain": (plain, "x.pt was refused"), "evil": (evil, "it would load posix.mkdir")}, good


@pytest.mark.parametrize("case", ["missing", "empty", "mixed", "shapes", "plain", "evil"])
def test_bad_sample_folders_exit_2_with_one_line(tmp_path, capsys, case):
    cases, good = _bad_folders(tmp_path)
    folder, text = cases[case]
    code, stdout, err = _run(capsys, "--samples", str(folder), "--train", str(good), "--out", str(tmp_path / "out"))
    assert code == 2 and stdout == ""
    assert err.startswith("easyhard: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert text in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,text", [
    (["--thresholds", "0.3,1.5"], "thresholds must be"),
    (["--thresholds", "a third"], "--thresholds must be comma-separated"),
    (["--n-boot", "3"], "--n-boot"),
    (["--max-samples", "0"], "--max-samples"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, text):
    _, good = _bad_folders(tmp_path)
    code, _, err = _run(capsys, "--samples", str(good), "--train", str(good), "--out", str(tmp_path / "o"), *args)
    assert code == 2 and text in err and err.count("\n") == 1
