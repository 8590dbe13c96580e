"""Offline mode: the monitor over saved diffusers checkpoints reproduces the records of the monitor attached to
training; the CLI commands and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from easyhard.cli import main
from easyhard._validate import ConfigError
from easyhard.monitor import Monitor, MonitorConfig, read_records, records_difference, saved_config
from easyhard.monitor.adapters import diffusers
from easyhard.monitor.offline import monitor_checkpoints

CONFIG = MonitorConfig(samples=32, pair_samples=16, n_boot=50, loss_test=32, loss_train=16, n_levels=3,
                       sampler_steps=4, pair_steps=4, score_inputs=8)
MEASURED = ("test_loss", "train_loss", "gap", "test_loss_mean", "nn_gap", "pair_similarity",
            "denoiser_similarity_train", "denoiser_similarity_test")


def _unet(seed):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short training of a model and its twin with the monitor attached, checkpoints saved at each update."""
    from diffusers import DDPMScheduler

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("online")
    gen = torch.Generator().manual_seed(0)
    data = torch.tanh(torch.randn(80, 1, 8, 8, generator=gen))
    train, twin_train, test = data[:16], data[16:32], data[32:]
    scheduler = DDPMScheduler(num_train_timesteps=100)
    nets = [_unet(1), _unet(2)]
    opts = [torch.optim.Adam(n.parameters(), lr=1e-3) for n in nets]
    monitor = Monitor(diffusers(nets[0], scheduler), train, test, root / "monitor", twin=diffusers(nets[1], scheduler),
                      twin_train=twin_train, config=CONFIG)
    scheduler.save_pretrained(root / "ckpt")
    for step in range(1, 7):
        for net, opt, x0 in zip(nets, opts, (train, twin_train)):
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, 100, (len(x0),), generator=gen)
            loss = ((net(scheduler.add_noise(x0, noise, t), t).sample - noise) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step % 2 == 0:
            monitor.update(step)
            nets[0].save_pretrained(root / "ckpt" / f"checkpoint-{step}")
            nets[1].save_pretrained(root / "twin" / f"checkpoint-{step}")
    for name, x in (("train", train), ("twin_train", twin_train), ("test", test)):
        (root / name).mkdir()
        torch.save(x.clone(), root / name / "data.pt")
    return root, train, twin_train, test


def _close(offline, online):
    assert [r["step"] for r in offline] == [r["step"] for r in online] == [2, 4, 6]
    for a, b in zip(offline, online):
        for key in MEASURED:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
        assert a["f_mem"] == b["f_mem"] and a["status"] == b["status"] and a["recommended"] == b["recommended"]


def test_offline_mode_reproduces_the_online_records(run, tmp_path):
    root, train, twin_train, test = run
    records = monitor_checkpoints(root / "ckpt", train, test, tmp_path / "off", twin_checkpoints=root / "twin",
                                  twin_train=twin_train, config=CONFIG)
    _close(records, read_records(root / "monitor" / "monitor.jsonl"))
    # a second pass over the same folder continues after the last step: nothing new, nothing duplicated
    again = monitor_checkpoints(root / "ckpt", train, test, tmp_path / "off", twin_checkpoints=root / "twin",
                                twin_train=twin_train, config=CONFIG)
    assert [r["step"] for r in again] == [2, 4, 6]


def test_cli_monitor_and_monitor_summary(run, tmp_path, capsys):
    root = run[0]
    args = ["monitor", "--checkpoints", str(root / "ckpt"), "--train", str(root / "train"), "--test",
            str(root / "test"), "--out", str(tmp_path / "cli"), "--twin-checkpoints", str(root / "twin"),
            "--twin-train", str(root / "twin_train"), "--samples", "32", "--sampler-steps", "4", "--levels", "3",
            "--n-boot", "50"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "recommended checkpoint: step" in out.out and "step 6:" in out.err
    records = read_records(tmp_path / "cli" / "monitor.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6] and (tmp_path / "cli" / "report.md").exists()
    assert main(["monitor-summary", str(tmp_path / "cli"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runs"][0]["n"] == 16


def test_cli_monitor_like_repeats_the_online_monitor(run, tmp_path, capsys):
    """--like reads the online monitor's settings (its own, not the CLI's defaults): the records agree to 1e-6."""
    root = run[0]
    assert saved_config(root / "monitor") == CONFIG
    args = ["monitor", "--checkpoints", str(root / "ckpt"), "--train", str(root / "train"), "--test",
            str(root / "test"), "--out", str(tmp_path / "like"), "--twin-checkpoints", str(root / "twin"),
            "--twin-train", str(root / "twin_train"), "--like", str(root / "monitor")]
    assert main(args) == 0
    online = read_records(root / "monitor" / "monitor.jsonl")
    assert records_difference(read_records(tmp_path / "like" / "monitor.jsonl"), online) <= 1e-6
    # an option given with --like overrides that one setting only
    assert main([*args[:8], str(tmp_path / "more"), *args[9:], "--n-boot", "60"]) == 0
    assert json.loads((tmp_path / "more" / "monitor.json").read_text())["identity"]["config"] == {
        **json.loads((root / "monitor" / "monitor.json").read_text())["identity"]["config"], "n_boot": 60}
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path)]) == 2
    assert "holds no readable monitor settings" in capsys.readouterr().err


def test_records_difference_finds_measurements_and_decisions_that_differ(run):
    import copy

    online = read_records(run[0] / "monitor" / "monitor.jsonl")
    other = copy.deepcopy(online)
    for r in other:
        r["seconds"] += 5.0  # wall time is not a measurement
    assert records_difference(other, online) == 0.0
    other[1]["test_loss"][2] += 1e-3
    assert abs(records_difference(other, online) - 1e-3) < 1e-12
    for change, where in ((lambda r: r[2].__setitem__("status", "memorising"), "step 6.status"),
                          (lambda r: r[0]["f_mem"]["1/3"].__setitem__("copies", 99), "step 2.f_mem.1/3.copies"),
                          (lambda r: r.pop(), "different steps")):
        changed = copy.deepcopy(online)
        change(changed)
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            records_difference(changed, online)


@pytest.mark.parametrize("change, message", [
    (lambda a, root, tmp: a.__setitem__(a.index("--checkpoints") + 1, str(tmp)), "no loadable checkpoint"),
    (lambda a, root, tmp: a.extend(["--samples", "1"]), "samples"),
    (lambda a, root, tmp: a.__setitem__(a.index("--test") + 1, str(tmp / "missing")), "--test"),
    (lambda a, root, tmp: a.extend(["--twin-train", str(root / "twin_train")]), "together"),
])
def test_cli_monitor_bad_input_is_one_line_with_exit_code_2(run, tmp_path, capsys, change, message):
    root = run[0]
    (tmp_path / "empty").mkdir()
    args = ["monitor", "--checkpoints", str(root / "ckpt"), "--train", str(root / "train"), "--test",
            str(root / "test"), "--out", str(tmp_path / "out")]
    change(args, root, tmp_path / "empty" if message == "no loadable checkpoint" else tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_monitor_unknown_prediction_type_is_one_line(run, tmp_path, capsys):
    import shutil

    root = run[0]
    shutil.copytree(root / "ckpt", tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "flow"}))
    args = ["monitor", "--checkpoints", str(tmp_path / "ckpt"), "--train", str(root / "train"), "--test",
            str(root / "test"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "prediction_type" in err and "flow" in err and err.count("\n") == 1
