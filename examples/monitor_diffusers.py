"""The monitor on a diffusers training loop: a tiny UNet2DModel memorises a few image patches on a CPU.

Two diffusers ``UNet2DModel`` (636,465 parameters each; blocks of 16, 32, 64 channels) train with the standard
diffusers recipe (DDPMScheduler with 1000 linear steps, uniform timesteps, eps-MSE, AdamW 5e-3 with cosine decay,
batch 32) on two disjoint sets of 32 grey 16 x 16 patches of the embedded photographs; 256 further patches of the
same photographs are held out. A :class:`~easyhard.monitor.Monitor` with the twin attached updates on a log grid
(1.5 per octave from step 175: 8 updates in 3,500 steps) and a copy of each model is saved at every update; at the
end the offline mode (:func:`~easyhard.monitor.monitor_checkpoints`, the library side of ``easyhard monitor
--like``) re-measures the saved checkpoints and compares its records with the online ones
(:func:`~easyhard.monitor.records_difference`).

Usage::

    pip install -c constraints.txt -e ".[images,unet]"                # the embedded photographs, diffusers
    python examples/monitor_diffusers.py --out runs/monitor_demo      # about 8 minutes on 2 CPU cores

Measured (seed 0, 2 idle cores, 2026-12-06; two runs gave the same records)::

    step   175  held-out 0.0331  f_mem 0.000 [0.000, 0.000]  twin similarity 0.679  generalising
    step   278  held-out 0.0311  f_mem 0.000 [0.000, 0.000]  twin similarity 0.745  generalising
    step   441  held-out 0.0316  f_mem 0.016 [0.000, 0.039]  twin similarity 0.516  biased
    step   700  held-out 0.0312  f_mem 0.000 [0.000, 0.000]  twin similarity 0.557  biased
    step  1111  held-out 0.0319  f_mem 0.062 [0.023, 0.102]  twin similarity 0.379  biased
    step  1764  held-out 0.0345  f_mem 0.000 [0.000, 0.000]  twin similarity 0.276  overfitting
    step  2800  held-out 0.0379  f_mem 0.164 [0.102, 0.234]  twin similarity 0.281  memorising
    step  3500  held-out 0.0389  f_mem 0.180 [0.117, 0.250]  twin similarity 0.233  memorising
    held-out loss minimum at step 278 (rise at the end 0.00775 = 5.0 SE); memorisation onset (f_mem lower bound
    > 0.05) at step 2800; twin similarity peak at step 278
    twin similarity fell by more than 3 SE from its peak first at step 441; held-out loss within 3 SE of its
    minimum from step 278 to 1111, above it first at step 1764
    training 417.8 s, monitor 31.9 s over 8 updates (overhead 7.6%), checkpoints 0.2 s, wall 450 s
    offline mode ...: largest difference from the online records 0 (25.0 s); statuses, steps and copy counts equal

Reading: the held-out loss has its minimum at step 278, and f_mem's lower bound passes 5% at step 2800 (21 of 128
samples are closer to their nearest training patch than a third of the distance to the second-nearest). The twin's
similarity peak falls on the same update as the loss minimum, so this grid cannot say which comes first; what it
does resolve is that the twin similarity has fallen 8.8 SE below its peak at step 441, while the held-out loss stays
within 3 SE of its minimum (a flat bottom from step 278 to 1111) and rises beyond it only at step 1764: the bias
indicators move two octaves before the held-out loss does. f_mem is not monotone between updates (0.062 at 1111, 0
at 1764): the samples come from the same noise, but the model changes in between.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup

from easyhard.data.images import embedded_patches
from easyhard.monitor import (Monitor, MonitorConfig, monitor_checkpoints, moved_away, records_difference,
                              saved_config)
from easyhard.monitor.adapters import diffusers

#: the monitor's default update frequency: log-spaced steps, UPDATES_PER_OCTAVE per doubling from FIRST_UPDATE on,
#: and the last step
FIRST_UPDATE = 175
UPDATES_PER_OCTAVE = 1.5
#: what one update measures: f_mem on 128 DDIM samples of 16 steps (its 95% lower bound clears 5% from about 13
#: copies), losses at 4 levels on the 32 training points and 128 held-out points, 48 coupled ancestral samples of
#: 10 steps for the twin's paired similarity
SIZES = dict(n_levels=4, loss_train=32, loss_test=128, samples=128, sampler_steps=16, pair_samples=48, pair_steps=10,
             score_inputs=64, n_boot=400)


def update_steps(steps: int, first: int = FIRST_UPDATE, per_octave: float = UPDATES_PER_OCTAVE) -> list[int]:
    """The update grid: ``per_octave`` log-spaced steps per doubling from ``first`` up to ``steps``, and ``steps``."""
    grid, k = {steps}, 0
    while (s := int(round(first * 2 ** (k / per_octave)))) < steps:
        grid.add(s)
        k += 1
    return sorted(grid)


def ordering(records: list[dict], z: float) -> dict:
    """When the markers of the run's records fall: the held-out-loss minimum and the twin's similarity peak (the
    recommended checkpoints of the last record); the first step at which the twin's paired similarity is more than
    ``z`` SE below its peak so far; the steps from the minimum on at which the held-out loss is within ``z`` SE of
    it (its flat bottom), and the first step at which it is above it by more than ``z`` SE."""
    def beyond(record: dict, key: str) -> bool:
        return moved_away(record["changes"].get(key), z)

    best = records[-1]["recommended"]
    loss_min = best["held_out_loss_min"]
    flat = [r["step"] for r in records if r["step"] >= loss_min and not beyond(r, "test_loss")]
    return {"held_out_loss_min": loss_min, "split_similarity_peak": best["split_similarity_peak"],
            "similarity_falls": next((r["step"] for r in records if beyond(r, "pair_similarity")), None),
            "loss_flat": flat, "loss_rises": next((r["step"] for r in records if beyond(r, "test_loss")), None)}


def make_unet(channels: tuple[int, ...], attention: bool, seed: int) -> UNet2DModel:
    """A tiny unconditional UNet2DModel for 1 x 16 x 16 images, its weights drawn from ``seed``."""
    down, up = ["DownBlock2D"] * len(channels), ["UpBlock2D"] * len(channels)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=channels,
                       layers_per_block=1, down_block_types=tuple(down), up_block_types=tuple(up),
                       norm_num_groups=min(8, channels[0]))


def load_data(n: int, held_out: int, source: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, twin split, held-out): disjoint sets of non-overlapping 16 x 16 patches (stride 16). The two training
    splits come from the photographs' training columns; the held-out patches from the same columns (``source``
    "train": the same law) or from the test columns ("test")."""
    extra = held_out if source == "train" else 0
    pool = embedded_patches("train", size=16, stride=16, n=2 * n + extra, seed=seed)
    test = pool[2 * n:] if source == "train" else embedded_patches("test", size=16, stride=16, n=held_out,
                                                                    seed=seed + 1)
    return pool[:n], pool[n:2 * n], test


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (a fresh one per run)")
    parser.add_argument("--steps", type=int, default=3500, help="training steps of each model")
    parser.add_argument("--n", type=int, default=32, help="training patches of each model (two disjoint splits)")
    parser.add_argument("--held-out", type=int, default=256, help="held-out patches")
    parser.add_argument("--held-out-from", choices=("train", "test"), default="train",
                        help="held-out patches from the photographs' training columns (the law of the training "
                             "splits) or from their test columns")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each model's training step (the model and its twin train "
                             "concurrently, one Python thread each) and of the monitor")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (AdamW, cosine decay to 0)")
    parser.add_argument("--channels", default="16,32,64", help="UNet block_out_channels, comma-separated")
    parser.add_argument("--attention", action="store_true", help="attention in the lowest-resolution blocks")
    parser.add_argument("--first-update", type=int, default=FIRST_UPDATE)
    parser.add_argument("--per-octave", type=float, default=UPDATES_PER_OCTAVE)
    parser.add_argument("--no-offline-check", dest="offline_check", action="store_false",
                        help="skip the offline mode over the saved checkpoints (and its comparison with the online "
                             "records) at the end")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # data, saved for the offline mode (easyhard monitor --train out/data/train --twin-train out/data/twin ...)
    train, twin_train, test = load_data(args.n, args.held_out, args.held_out_from, args.seed)
    for name, x in (("train", train), ("twin", twin_train), ("test", test)):
        (out / "data" / name).mkdir(parents=True, exist_ok=True)
        torch.save(x.clone(), out / "data" / name / f"{name}.pt")

    # the model and its twin: same architecture and training, other initialisation and a disjoint split
    channels = tuple(int(c) for c in args.channels.split(","))
    sched = DDPMScheduler(num_train_timesteps=1000)
    sched.save_pretrained(out / "checkpoints")
    models = [make_unet(channels, args.attention, args.seed), make_unet(channels, args.attention, args.seed + 1)]
    splits, folders = [train, twin_train], [out / "checkpoints", out / "twin_checkpoints"]
    opts = [torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.0) for m in models]
    lr_schedules = [get_cosine_schedule_with_warmup(opt, 0, args.steps) for opt in opts]
    gens = [torch.Generator().manual_seed(args.seed + k) for k in range(2)]  # one per model: order-free threads
    losses = [math.nan, math.nan]

    def train_step(k: int) -> None:
        """One standard diffusers step of model k: noise, uniform timesteps, add_noise, MSE on eps."""
        model, data, gen = models[k], splits[k], gens[k]
        x0 = data[torch.randint(len(data), (args.batch,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
        loss = F.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()
        lr_schedules[k].step()
        losses[k] = loss.item()

    # the monitor; its samplers clip x0_hat as the scheduler's own sampling does (clip_sample=True, range 1)
    clip = sched.config.clip_sample_range if sched.config.clip_sample else None
    config = MonitorConfig(**SIZES, clip_x0=clip)
    monitor = Monitor(diffusers(models[0], sched), train, test, out / "monitor", twin=diffusers(models[1], sched),
                      twin_train=twin_train, config=config)
    grid = update_steps(args.steps, args.first_update, args.per_octave)
    print(f"{sum(p.numel() for p in models[0].parameters())} parameters per model, n = {args.n} per split, "
          f"{len(test)} held-out, {args.steps} steps; {len(grid)} updates at steps {grid}", flush=True)

    train_seconds = monitor_seconds = save_seconds = 0.0
    started = time.perf_counter()
    with ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(args.threads,)) as pool:
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            list(pool.map(train_step, range(2)))
            train_seconds += time.perf_counter() - t0
            if step not in grid:
                continue
            t0 = time.perf_counter()
            for model, folder in zip(models, folders):
                model.save_pretrained(folder / f"checkpoint-{step}")
            t1 = time.perf_counter()
            record = monitor.update(step)
            monitor_seconds += time.perf_counter() - t1
            save_seconds += t1 - t0
            f = record["f_mem"]["1/3"]
            print(f"step {step:5d}  loss {losses[0]:.4f} / twin {losses[1]:.4f}  held-out {record['test_loss_mean']:.4f}"
                  f"  f_mem {f['value']:.3f} [{f['interval'][0]:.3f}, {f['interval'][1]:.3f}]  twin similarity "
                  f"{record['pair_similarity']:.3f}  {record['status']:12s} (update {record['seconds']:.1f} s, "
                  f"{time.perf_counter() - started:.0f} s)", flush=True)
    t0 = time.perf_counter()
    monitor.close()
    monitor_seconds += time.perf_counter() - t0

    records, last = monitor.records, monitor.records[-1]
    memorising = [r for r in records if r["status"] == "memorising"]
    onset = memorising[0]["step"] if memorising else None
    rise = last["changes"]["test_loss"]
    order = ordering(records, config.z)
    summary = {
        **order,
        "held_out_loss_rise_at_end": {"change": rise["change"], "se": rise["se"]},
        "memorisation_onset": onset,
        "f_mem_at_onset": memorising[0]["f_mem"]["1/3"] if memorising else None,
        "f_mem_at_end": last["f_mem"]["1/3"],
        "status_at_end": last["status"],
        "statuses": {r["step"]: r["status"] for r in records},
        "train_seconds": train_seconds, "monitor_seconds": monitor_seconds,
        "monitor_record_seconds": sum(r["seconds"] for r in records), "checkpoint_seconds": save_seconds,
        "overhead": monitor_seconds / train_seconds, "wall_seconds": time.perf_counter() - started,
        "updates": len(records),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "monitor_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
    }
    if args.offline_check:  # the offline mode over the saved checkpoints, with the online monitor's settings
        t0 = time.perf_counter()
        offline = monitor_checkpoints(folders[0], train, test, out / "offline", twin_checkpoints=folders[1],
                                      twin_train=twin_train, config=saved_config(out / "monitor"))
        summary["offline_max_difference"] = records_difference(offline, records)
        summary["offline_seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"held-out loss minimum at step {order['held_out_loss_min']} (rise at the end {rise['change']:.4g} = "
          f"{rise['change'] / rise['se'] if rise['se'] else 0.0:.1f} SE); memorisation onset (f_mem lower bound "
          f"> {config.memorising_level:g}) at step {onset}; twin similarity peak at step "
          f"{order['split_similarity_peak']}")
    print(f"twin similarity fell by more than {config.z:g} SE from its peak first at step {order['similarity_falls']}; "
          f"held-out loss within {config.z:g} SE of its minimum from step {order['loss_flat'][0]} to "
          f"{order['loss_flat'][-1]}, above it first at step {order['loss_rises']}")
    print(f"training {train_seconds:.1f} s, monitor {monitor_seconds:.1f} s over {len(records)} updates "
          f"(overhead {summary['overhead']:.1%}), checkpoints {save_seconds:.1f} s, wall {summary['wall_seconds']:.0f} s")
    if args.offline_check:
        print(f"offline mode over {folders[0]} and {folders[1]}: largest difference from the online records "
              f"{summary['offline_max_difference']:.3g} ({summary['offline_seconds']:.1f} s); statuses, steps and "
              f"copy counts equal")
    return summary


if __name__ == "__main__":
    main()
