"""Checkpoint discovery and safe loading of the monitor's offline mode (easyhard.monitor.checkpoints)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from easyhard._validate import ConfigError
from easyhard.monitor.checkpoints import Checkpoint, find_checkpoints, load_checkpoint, load_scheduler

diffusers_lib = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def tiny_unet(seed: int, widths: tuple[int, int] = (8, 16)) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return diffusers_lib.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=widths,
                                         layers_per_block=1, norm_num_groups=4,
                                         down_block_types=("DownBlock2D", "DownBlock2D"),
                                         up_block_types=("UpBlock2D", "UpBlock2D"))


def assert_same_weights(model: nn.Module, reference: nn.Module) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture
def run(tmp_path: Path) -> dict[int, nn.Module]:
    """A checkpoints folder with two save_pretrained folders, a safetensors and a wrapped .pt state dict, the
    UNet's config.json at the root, and entries that are not checkpoints. Returns the saved network per step."""
    saved = {step: tiny_unet(step) for step in (100, 20, 50, 70)}
    saved[100].save_pretrained(tmp_path / "checkpoint-100")
    saved[20].save_pretrained(tmp_path / "checkpoint-20")
    safetensors_torch.save_file(saved[50].state_dict(), tmp_path / "unet_step_050.safetensors")
    torch.save({"model": saved[70].state_dict(), "step": 70, "optimizer": {"lr": 1e-3}}, tmp_path / "ckpt_70.pt")
    saved[100].save_config(tmp_path)  # config.json: the architecture of the state dicts
    (tmp_path / "logs").mkdir()
    (tmp_path / "samples-300").mkdir()
    (tmp_path / "notes_400.txt").write_text("not a checkpoint")
    (tmp_path / ".ckpt_500.pt.tmp").write_bytes(b"partial")
    return saved


def test_find_checkpoints_in_step_order(tmp_path: Path, run: dict[int, nn.Module]) -> None:
    found = find_checkpoints(tmp_path)
    assert found == [Checkpoint(20, tmp_path / "checkpoint-20", "diffusers"),
                     Checkpoint(50, tmp_path / "unet_step_050.safetensors", "safetensors"),
                     Checkpoint(70, tmp_path / "ckpt_70.pt", "state_dict"),
                     Checkpoint(100, tmp_path / "checkpoint-100", "diffusers")]


def test_loaded_weights_equal_the_saved_ones(tmp_path: Path, run: dict[int, nn.Module]) -> None:
    rng = torch.get_rng_state()
    for ckpt in find_checkpoints(tmp_path):
        loaded = load_checkpoint(ckpt)
        assert isinstance(loaded, diffusers_lib.UNet2DModel)
        assert_same_weights(loaded, run[ckpt.step])
    assert torch.equal(torch.get_rng_state(), rng)  # building the networks left the global RNG alone


def test_loading_into_a_given_model_is_in_place(tmp_path: Path, run: dict[int, nn.Module]) -> None:
    model = tiny_unet(0)
    for ckpt in find_checkpoints(tmp_path):
        assert load_checkpoint(ckpt, model) is model
        assert_same_weights(model, run[ckpt.step])


def test_pipeline_and_accelerate_folders(tmp_path: Path) -> None:
    pipeline, accelerate = tiny_unet(3), tiny_unet(4)
    folder = tmp_path / "step_000300"
    pipeline.save_pretrained(folder / "unet")
    diffusers_lib.DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(
        folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers",
                                                         "UNet2DModel"]}))
    (tmp_path / "checkpoint-400").mkdir()
    safetensors_torch.save_file(accelerate.state_dict(), tmp_path / "checkpoint-400" / "model.safetensors")
    (tmp_path / "checkpoint-400" / "optimizer.bin").write_bytes(b"not read")
    pipeline.save_config(tmp_path)
    found = find_checkpoints(tmp_path)
    assert [(c.step, c.kind) for c in found] == [(300, "diffusers"), (400, "safetensors")]
    assert_same_weights(load_checkpoint(found[0]), pipeline)
    assert_same_weights(load_checkpoint(found[1]), accelerate)
    scheduler = load_scheduler(tmp_path)  # the newest folder, checkpoint-400, has none: step_000300's
    assert isinstance(scheduler, diffusers_lib.DDIMScheduler)
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.prediction_type == "v_prediction"


def test_load_scheduler_at_the_top_level(tmp_path: Path) -> None:
    assert load_scheduler(tmp_path) is None
    diffusers_lib.DDPMScheduler(num_train_timesteps=200, beta_end=0.01).save_pretrained(tmp_path)
    scheduler = load_scheduler(tmp_path)
    assert isinstance(scheduler, diffusers_lib.DDPMScheduler)
    assert (scheduler.config.num_train_timesteps, scheduler.config.beta_end) == (200, 0.01)
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="scheduler_config.json is not a readable JSON file") as err:
        load_scheduler(tmp_path)
    one_line(err)
    (tmp_path / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="scheduler_config.json must hold a JSON object"):
        load_scheduler(tmp_path)


def test_ddp_prefix_and_ema_wrapping(tmp_path: Path) -> None:
    unet = tiny_unet(5)
    state = {f"module.{k}": v for k, v in unet.state_dict().items()}
    torch.save({"ema": state, "step": 9}, tmp_path / "ema_9.pth")
    assert_same_weights(load_checkpoint(find_checkpoints(tmp_path)[0], tiny_unet(0)), unet)


def test_duplicate_steps(tmp_path: Path, run: dict[int, nn.Module]) -> None:
    torch.save(run[20].state_dict(), tmp_path / "model_20.pt")
    with pytest.raises(ConfigError) as err:
        find_checkpoints(tmp_path)
    assert one_line(err) == (f"two checkpoints at step 20: {tmp_path / 'checkpoint-20'} and "
                             f"{tmp_path / 'model_20.pt'} (keep one)")


def test_nothing_loadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        find_checkpoints(tmp_path)
    assert one_line(err).startswith(f"no loadable checkpoint in {tmp_path} (expected step folders")
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")  # no step number
    with pytest.raises(ConfigError, match="no loadable checkpoint"):
        find_checkpoints(tmp_path)
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        find_checkpoints(tmp_path / "missing")


def test_corrupted_files(tmp_path: Path, run: dict[int, nn.Module]) -> None:
    data = (tmp_path / "unet_step_050.safetensors").read_bytes()
    (tmp_path / "unet_step_050.safetensors").write_bytes(data[: len(data) // 2])
    data = (tmp_path / "ckpt_70.pt").read_bytes()
    (tmp_path / "ckpt_70.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "checkpoint-20" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    found = {c.step: c for c in find_checkpoints(tmp_path)}
    for step, pattern in ((50, "cannot be read as safetensors"), (70, "is unreadable or truncated"),
                          (20, "cannot load the diffusers UNet in")):
        with pytest.raises(ConfigError, match=pattern) as err:
            load_checkpoint(found[step])
        assert str(found[step].path) in one_line(err)
    with pytest.raises(ConfigError, match="cannot be read as safetensors"):
        load_checkpoint(found[20], tiny_unet(0))


def test_a_diffusers_folder_whose_weights_do_not_match_its_config(tmp_path: Path) -> None:
    tiny_unet(0).save_pretrained(tmp_path / "checkpoint-1")
    tiny_unet(0, widths=(8, 32)).save_config(tmp_path / "checkpoint-1")
    with pytest.raises(ConfigError, match=r"cannot load the diffusers UNet in .*checkpoint-1 \(RuntimeError: .*"
                                          r"size mismatch for") as err:
        load_checkpoint(find_checkpoints(tmp_path)[0])
    one_line(err)


class Payload:
    """Unpickling this calls os.system: a checkpoint must never be unpickled with arbitrary objects allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "model_10.pt"
    blob = {"state_dict": {"weight": torch.zeros(2)}, "payload": Payload(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(blob, protocol=2))
    else:
        torch.save(blob, path)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(find_checkpoints(tmp_path)[0], nn.Linear(2, 1))
    assert one_line(err) == (f"checkpoint {path} cannot be loaded safely: it holds pickled objects other than "
                             f"tensors, refused by torch.load(weights_only=True)")
    assert not marker.exists()


def test_mismatched_architecture(tmp_path: Path, run: dict[int, nn.Module]) -> None:
    found = {c.step: c for c in find_checkpoints(tmp_path)}
    wider = tiny_unet(0, widths=(8, 32))
    with pytest.raises(ConfigError) as err:
        load_checkpoint(found[50], wider)
    message = one_line(err)
    assert message.startswith(f"checkpoint {tmp_path / 'unet_step_050.safetensors'} does not match the model: "
                              f"shape mismatch [")
    assert "(+" in message  # truncated list
    with pytest.raises(ConfigError) as err:
        load_checkpoint(found[70], nn.Linear(3, 2))
    assert one_line(err) == (f"checkpoint {tmp_path / 'ckpt_70.pt'} does not match the model: missing keys [bias, "
                             f"weight]; unexpected keys [conv_in.bias, conv_in.weight, conv_norm_out.bias, "
                             f"conv_norm_out.weight, conv_out.bias] (+{len(run[70].state_dict()) - 5} more)")


def test_state_dicts_need_the_architecture(tmp_path: Path, run: dict[int, nn.Module]) -> None:
    (tmp_path / "config.json").unlink()
    found = {c.step: c for c in find_checkpoints(tmp_path)}
    with pytest.raises(ConfigError) as err:
        load_checkpoint(found[50])
    assert one_line(err) == (f"state-dict checkpoints need the architecture: put the UNet's config.json in "
                             f"{tmp_path} or pass a model")
    assert_same_weights(load_checkpoint(found[100]), run[100])  # a diffusers folder carries its own config
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ConfigError) as err:
        load_checkpoint(found[70])
    assert one_line(err) == f"{tmp_path / 'config.json'} must be a UNet2DModel config (got UNet2DConditionModel)"


def test_a_dict_without_a_state_dict(tmp_path: Path) -> None:
    torch.save({"step": 3, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt_3.ckpt")
    with pytest.raises(ConfigError) as err:
        load_checkpoint(find_checkpoints(tmp_path)[0], nn.Linear(2, 2))
    assert one_line(err) == (f"checkpoint {tmp_path / 'ckpt_3.ckpt'} holds no state dict (got a dict with keys "
                             f"[optimizer, step]; expected a dict of tensors or one under state_dict, model, ema, "
                             f"unet)")
