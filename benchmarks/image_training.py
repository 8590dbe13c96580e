"""Images/s of easyhard's diffusion training step against a plain reference loop, side by side.

What is compared (same diffusers ``UNet2DModel`` configuration, same batch size, eps-prediction, T = 1000
linear schedule, Adam-type optimizer, random data of CIFAR shape):

* ``reference``: a loop written the way the diffusers training examples write it: a ``DataLoader`` over a
  ``TensorDataset`` (shuffled), diffusers' ``DDPMScheduler.add_noise``, ``model(noisy, t).sample``,
  ``F.mse_loss``, ``AdamW``; fp32, no compile.
* ``easyhard``: :func:`easyhard.train.train_diffusion` (in-memory data indexed on the device, one generator,
  snapshots only at the start and the end); on CUDA its fast path (bf16 autocast, channels-last, fused
  Adam) and, as a third row, the same with ``torch.compile``.

Rates are images/s after warm-up steps, best of ``--repeats``. The ratio is easyhard / reference.
The issue's targets (one H100): >= 15,000 images/s for a ~3M-parameter U-Net at 32x32, batch 512, and
>= 1.5x the reference loop.

Usage::

    python benchmarks/image_training.py            # CPU rows (small batch), CUDA rows when available
    python benchmarks/image_training.py --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def _unet(device: str):
    from easyhard.models.unet import UNetConfig, make_unet

    return make_unet(UNetConfig.preset("small"), torch.Generator().manual_seed(0)).to(device)


def reference_rate(batch: int, steps: int, device: str) -> float:
    """The diffusers-example style loop; images/s over ``steps`` steps after 2 warm-up steps."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from torch.utils.data import DataLoader, TensorDataset

    model = _unet(device).unet  # the bare diffusers module, called the diffusers way
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    data = torch.randn(batch * (steps + 2), 3, 32, 32)
    loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    model.train()
    start = None
    for k, (clean,) in enumerate(loader):
        if k == 2:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        clean = clean.to(device)
        noise = torch.randn_like(clean)
        t = torch.randint(0, 1000, (len(clean),), device=device)
        noisy = scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(model(noisy, t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def run(args) -> list[dict]:
    rows = []
    devices = [("cpu", args.cpu_batch, args.cpu_steps)]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(("cuda", args.cuda_batch, args.cuda_steps))
    for device, batch, steps in devices:
        ref = max(reference_rate(batch, steps, device) for _ in range(args.repeats))
        variants = [("easyhard", False)] + ([("easyhard+compile", True)] if device == "cuda" else [])
        for name, comp in variants:
            rate = max(_last_interval_rate(batch, steps, device, comp) for _ in range(args.repeats))
            rows.append({"device": device, "batch": batch, "engine": name, "images_per_s": rate,
                         "reference_images_per_s": ref, "ratio": rate / ref,
                         "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None})
    return rows


def _last_interval_rate(batch: int, steps: int, device: str, compile_: bool) -> float:
    """Rate of the timed interval only (the first logged interval holds the warm-up steps)."""
    from easyhard.diffusion import DDPMSchedule
    from easyhard.train.diffusion import DiffusionTrainConfig, train_diffusion

    config = DiffusionTrainConfig(steps=steps + 2, batch_size=batch, lr=2e-4, warmup=0, first=2, per_decade=1,
                                  device=device, compile=compile_, grad_clip=None)
    data = torch.randn(4 * batch, 3, 32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        train_diffusion(_unet(device), data, DDPMSchedule(T=1000), config, tmp)
        log = json.loads(open(f"{tmp}/train_log.json").read())
    return log["images_per_s"][-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpu-batch", type=int, default=32)
    parser.add_argument("--cpu-steps", type=int, default=5)
    parser.add_argument("--cuda-batch", type=int, default=512)
    parser.add_argument("--cuda-steps", type=int, default=50)
    parser.add_argument("--no-cuda", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'device':<6} {'batch':>5} {'engine':<18} {'images/s':>10} {'reference':>10} {'ratio':>6}")
        for r in rows:
            print(f"{r['device']:<6} {r['batch']:>5} {r['engine']:<18} {r['images_per_s']:>10.1f} "
                  f"{r['reference_images_per_s']:>10.1f} {r['ratio']:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
