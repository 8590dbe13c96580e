"""The monitor on a diffusers training loop: a tiny UNet2DModel memorises a few image patches on a CPU.

DRAFT (numbers to be filled in from the final run).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup

from easyhard.data.images import embedded_patches
from easyhard.monitor import Monitor, MonitorConfig
from easyhard.monitor.adapters import diffusers

#: the monitor's update grid (its default frequency): step 0, then UPDATES_PER_OCTAVE log-spaced updates per
#: doubling of the step from FIRST_UPDATE on, and the last step
FIRST_UPDATE = 100
UPDATES_PER_OCTAVE = 3
#: the measurement sizes: enough samples for f_mem's lower bound to clear 5% (3 copies out of 128 do not; about 13
#: do), few levels and short samplers so an update costs a few seconds of CPU
SIZES = dict(n_levels=5, loss_train=64, loss_test=256, samples=128, sampler_steps=20, pair_samples=64, pair_steps=10,
             score_inputs=64, n_boot=400)


def update_steps(steps: int, first: int = FIRST_UPDATE, per_octave: int = UPDATES_PER_OCTAVE) -> list[int]:
    """``per_octave`` log-spaced steps per doubling from ``first`` up to ``steps``, and ``steps``."""
    grid = {steps}
    if first < steps:
        k = 0
        while (s := int(round(first * 2 ** (k / per_octave)))) < steps:
            grid.add(s)
            k += 1
    return sorted(grid)


def make_unet(channels: tuple[int, ...], attention: bool, seed: int) -> UNet2DModel:
    """A tiny unconditional UNet2DModel for 1 x 16 x 16 images, its weights drawn from ``seed``."""
    down, up = ["DownBlock2D"] * len(channels), ["UpBlock2D"] * len(channels)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=channels,
                       layers_per_block=1, down_block_types=tuple(down), up_block_types=tuple(up),
                       norm_num_groups=min(8, channels[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--steps", type=int, default=4000, help="training steps of each model")
    parser.add_argument("--n", type=int, default=32, help="training patches of each model (two disjoint splits)")
    parser.add_argument("--test", type=int, default=256, help="held-out patches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (cosine decay to 0)")
    parser.add_argument("--channels", default="16,32", help="block_out_channels, comma-separated")
    parser.add_argument("--attention", action="store_true", help="attention in the lowest-resolution blocks")
    parser.add_argument("--first-update", type=int, default=FIRST_UPDATE)
    parser.add_argument("--per-octave", type=int, default=UPDATES_PER_OCTAVE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # data: two disjoint training splits of n non-overlapping 16x16 patches, held-out patches from the test columns
    pool = embedded_patches("train", size=16, stride=16, n=2 * args.n, seed=args.seed)
    train, twin_train = pool[:args.n], pool[args.n:]
    test = embedded_patches("test", size=16, stride=16, n=args.test, seed=args.seed + 1)
    for name, x in (("train", train), ("twin", twin_train), ("test", test)):
        (out / "data" / name).mkdir(parents=True, exist_ok=True)
        torch.save(x.clone(), out / "data" / name / f"{name}.pt")

    channels = tuple(int(c) for c in args.channels.split(","))
    sched = DDPMScheduler(num_train_timesteps=1000)
    sched.save_pretrained(out / "checkpoints")
    unet = make_unet(channels, args.attention, args.seed)
    twin = make_unet(channels, args.attention, args.seed + 1)
    models = [(unet, train, out / "checkpoints"), (twin, twin_train, out / "twin_checkpoints")]
    opts = [torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.0) for m, _, _ in models]
    lr_schedules = [get_cosine_schedule_with_warmup(opt, 0, args.steps) for opt in opts]
    gen = torch.Generator().manual_seed(args.seed)

    # samplers clip x0_hat like the scheduler's own sampling loop (DDPMScheduler: clip_sample=True, range 1)
    clip = sched.config.clip_sample_range if sched.config.clip_sample else None
    config = MonitorConfig(**SIZES, clip_x0=clip)
    monitor = Monitor(diffusers(unet, sched), train, test, out / "monitor", twin=diffusers(twin, sched),
                      twin_train=twin_train, config=config)
    grid = update_steps(args.steps, args.first_update, args.per_octave)
    print(f"{sum(p.numel() for p in unet.parameters())} parameters per model, n = {args.n}, {args.steps} steps, "
          f"{len(grid)} updates at steps {grid}", flush=True)

    train_seconds = monitor_seconds = save_seconds = 0.0
    losses = [math.nan, math.nan]
    started = time.perf_counter()
    for step in range(args.steps + 1):
        if step > 0:
            t0 = time.perf_counter()
            for k, ((model, data, _), opt, lr_schedule) in enumerate(zip(models, opts, lr_schedules)):
                x0 = data[torch.randint(len(data), (args.batch,), generator=gen)]
                noise = torch.randn(x0.shape, generator=gen)
                t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
                loss = F.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lr_schedule.step()
                losses[k] = loss.item()
            train_seconds += time.perf_counter() - t0
        if step in grid:
            t0 = time.perf_counter()
            for model, _, folder in models:
                model.save_pretrained(folder / f"checkpoint-{step}")
            t1 = time.perf_counter()
            record = monitor.update(step)
            monitor_seconds += time.perf_counter() - t1
            save_seconds += t1 - t0
            f = record["f_mem"]["1/3"]
            print(f"step {step:5d}  train loss {losses[0]:.4f} / twin {losses[1]:.4f}  held-out {record['test_loss_mean']:.4f}"
                  f"  f_mem {f['value']:.3f} [{f['interval'][0]:.3f}, {f['interval'][1]:.3f}]  pair "
                  f"{record['pair_similarity']:.3f}  {record['status']}  ({record['seconds']:.1f} s; "
                  f"{time.perf_counter() - started:.0f} s)", flush=True)
    records = monitor.records
    last = records[-1]
    memorising = next((r["step"] for r in records if r["status"] == "memorising"), None)
    record_seconds = sum(r["seconds"] for r in records)
    summary = {
        "held_out_loss_min": last["recommended"]["held_out_loss_min"],
        "held_out_rise_at_end": last["changes"]["test_loss"],
        "memorisation_onset": memorising,
        "split_similarity_peak": last["recommended"]["split_similarity_peak"],
        "train_seconds": train_seconds, "monitor_seconds": monitor_seconds, "monitor_record_seconds": record_seconds,
        "checkpoint_seconds": save_seconds, "overhead": monitor_seconds / train_seconds,
        "wall_seconds": time.perf_counter() - started, "updates": len(grid),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
