"""The image experiment end to end at toy size, through the CLI: files, reference floors, checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from easyhard.cli import main
from easyhard.experiments import images as images_experiment


def test_reproduce_images_writes_report_and_reference_floors(tmp_path, capsys):
    tiny = {"n_train": 12_000, "n_test": 2_000, "steps": 40, "first": 10, "per_decade": 4, "n_eval": 256,
            "n_gen": 512, "sampler_steps": 6, "ica_components": 16, "eval_indices": "[10, 50, 300]", "width": 32,
            "depth": 2}
    out = tmp_path / "out"
    sets = [arg for key, value in tiny.items() for arg in ("--set", f"{key}={value}")]
    code = main(["reproduce", "images", "--quick", "--out", str(out), "--seeds", "1", "--workers", "1", *sets])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "images_loss_ratio.png", "images_sample_errors.png",
            "images_delta_w.png"} <= files
    res = json.loads((out / "results.json").read_text())["images"]
    ref = res["reference"]
    # the plug-in Wiener test loss is close to the Gaussian MMSE of the training moments (test region differs a bit)
    np.testing.assert_allclose(ref["L_G_test"], ref["L_G"], rtol=0.25)
    assert ref["sampling_floor"]["E_R"] < 0.25 and abs(ref["sampler_floor"]["E_R"] - 1) < 0.15  # data vs Gaussian
    runs = {(r["arm"], r["seed"]) for r in res["runs"]}
    assert runs == {("real", 0), ("clone", 0)}
    real = next(r for r in res["runs"] if r["arm"] == "real")
    assert real["steps"][0] == 0 and real["steps"][-1] == 40 and len(real["loss"]) == len(real["steps"])
    assert set(res["checks"]["seeds"]["0"]["pass"]) >= {"early_agreement", "covariance_before_higher_order"}
    assert "image checks pass" in captured.out and "## Distributional simplicity bias" in (out / "report.md").read_text()
    assert (out / "real-seed0" / "state.pt").exists() and list((out / "real-seed0" / "snapshots").glob("*.pt"))


def test_full_profile_needs_a_data_dir(tmp_path, capsys):
    code = main(["reproduce", "images", "--full", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--data-dir" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cifar_unet_path_runs_at_toy_size_on_cpu(tmp_path):
    """The --full path (CIFAR-10 batches, diffusers U-Net) at toy size: a small standard-format folder."""
    import pickle

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, size=(20, 3072), dtype=np.uint8), b"labels": [0] * 20}, fh)
    config = images_experiment.ImagesConfig(
        data="cifar10", data_dir=str(folder), model="unet", unet_preset="tiny", n_train=100, n_test=20, n_eval=16,
        n_gen=32, steps=6, first=2, per_decade=4, batch_size=8, ica_components=4, sampler_steps=3,
        eval_indices=(10, 300), seeds=(0,), workers=1)
    res = images_experiment.run_images(config, tmp_path / "out")
    real = next(r for r in res["runs"] if r["arm"] == "real")
    assert real["steps"][-1] == 6 and np.isfinite(np.asarray(real["loss"])).all()
    assert len(real["mode_variances"][0]) == 3072
