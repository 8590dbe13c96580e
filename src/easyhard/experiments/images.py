"""Distributional simplicity bias on natural images: a real arm and its Gaussian-clone arm
(docs/theory/images.md, Protocols A-D; the quick setting of docs/theory/images.md section 9).

Both arms train the same denoiser with the same initialisation, mini-batch indices and noise (one seed
drives both); only the training set differs: real patches, or samples of N(mean, covariance) of them.
At every checkpoint each arm is measured on the same fixed inputs:

- the eps-loss on real test data at the evaluation indices, against the plug-in Wiener filter's loss
  L_G^test(i) (Protocol A) and the distance delta_W to the Wiener denoiser (Protocol B);
- samples from shared sampler noise (DDIM-Heun, quadratic indices): covariance error E_Sigma against the
  training covariance, the higher-order error E_R (robust sparsity along ICA filters) and E_K (kurtosis),
  and the variance of every PCA mode (Protocols C and D).

Every generated-sample metric comes with its sampling floor (two disjoint real sets of the same size)
and its sampler floor (the exact Wiener denoiser through the same sampler).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from easyhard._validate import (ConfigError, check_choice, check_device, check_distinct, check_int_at_least,
                                check_int_in, check_schedule_length, check_seed, check_workers)
from easyhard.diffusion import DDPMSchedule
from easyhard.experiments.registry import Experiment, Option, RunContext

ARMS = ("real", "clone")
DATA = ("patches", "cifar10", "folder")


@dataclass(frozen=True)
class ImagesConfig:
    """Settings of ``reproduce images``; defaults: the quick CPU setting of docs/theory/images.md section 9."""

    data: str = "patches"
    data_dir: str | None = None
    patch_size: int = 8
    n_train: int = 100_000
    n_test: int = 20_000
    model: str = "mlp"
    width: int = 256
    depth: int = 3
    unet_preset: str = "small"
    steps: int = 10_000
    batch_size: int = 256
    lr: float = 2e-3
    warmup: int = 100
    grad_clip: float = 1.0
    per_decade: int = 10
    first: int = 100
    seeds: tuple[int, ...] = (0, 1)
    T: int = 1000
    eval_indices: tuple[int, ...] = (10, 25, 50, 100, 200, 300, 500, 700, 900)
    n_eval: int = 2048
    n_gen: int = 4096
    sampler_steps: int = 25
    ica_components: int = 64
    device: str = "cpu"
    compile: bool = False
    workers: int = 2

    def __post_init__(self):
        check_choice("data", self.data, DATA)
        check_choice("model", self.model, ("mlp", "unet"))
        if self.data != "patches" and self.data_dir is None:
            raise ConfigError(f"data {self.data} needs --data-dir (CIFAR-10 Python batches, or a folder of images)")
        for name in ("n_train", "n_test", "steps", "batch_size", "n_eval", "n_gen", "sampler_steps"):
            check_int_at_least(name, getattr(self, name), 2 if name == "sampler_steps" else 1)
        check_workers("workers", self.workers)
        check_device("device", self.device)
        if not self.seeds:
            raise ConfigError("seeds must hold at least one seed")
        for seed in check_distinct("seeds", self.seeds):
            check_seed("seeds", seed)
        for i in self.eval_indices:
            if not 0 <= i < self.T:
                raise ConfigError(f"eval_indices must lie in [0, {self.T - 1}] (got {i})")
        check_int_in("patch_size", self.patch_size, 2, 64)
        check_schedule_length("T", self.T, 2)
        from easyhard.models.unet import UNET_PRESETS

        check_choice("unet_preset", self.unet_preset, UNET_PRESETS)
        check_int_at_least("ica_components", self.ica_components, 1)
        self.train_config(0)  # the settings the run derives are checked now, before any work
        if self.model == "mlp":
            from easyhard.models.mlp import MLPConfig

            MLPConfig(d=3 * self.patch_size**2, width=self.width, depth=self.depth)

    def train_config(self, seed: int):
        """The training settings of one arm (:class:`easyhard.train.DiffusionTrainConfig`)."""
        from easyhard.train.diffusion import DiffusionTrainConfig

        return DiffusionTrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                                    grad_clip=self.grad_clip, per_decade=self.per_decade, first=self.first, seed=seed,
                                    device=self.device, compile=self.compile)

    def schedule(self) -> DDPMSchedule:
        return DDPMSchedule(T=self.T)

    def to_dict(self) -> dict:
        return asdict(self)


QUICK = ImagesConfig()


@dataclass
class Reference:
    """What both arms are measured against (computed once from the real data)."""

    train: torch.Tensor  # centred training set (n, C, H, W)
    test: torch.Tensor  # centred test inputs for the losses (n_eval, ...)
    ref: torch.Tensor  # real samples the generated statistics are compared with
    filters: torch.Tensor  # ICA filters (J, d)
    train_moments: object  # easyhard.metrics.images.Moments of the training set
    wiener: object  # easyhard.oracles.WienerDenoiser of the training set
    sigma_data: float

    @property
    def eigenvalues(self) -> torch.Tensor:
        return self.train_moments.eigenvalues


def load_data(config: ImagesConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) images in [-1, 1]: embedded patches, CIFAR-10, or a folder of images (last 20% by name: test)."""
    from easyhard.data import embedded_patches, load_cifar10, load_image_folder

    if config.data == "patches":
        return (embedded_patches("train", size=config.patch_size, n=config.n_train),
                embedded_patches("test", size=config.patch_size, n=config.n_test))
    if config.data == "folder":
        images = load_image_folder(config.data_dir)
        cut = int(round(0.8 * len(images)))
        return images[:cut][: config.n_train], images[cut:][: config.n_test]
    train, _ = load_cifar10(config.data_dir, "train")
    test, _ = load_cifar10(config.data_dir, "test")
    return train[: config.n_train], test[: config.n_test]


def prepare(config: ImagesConfig) -> tuple[Reference, torch.Tensor]:
    """The reference objects and the clone training set (per-pixel training mean removed, DC kept)."""
    from easyhard.data import gaussian_clone
    from easyhard.metrics.images import ica_filters, moments
    from easyhard.oracles import WienerDenoiser

    train, test = load_data(config)
    mu = train.mean(0, keepdim=True)
    train, test = train - mu, test - mu
    clone = gaussian_clone(train, generator=torch.Generator().manual_seed(10_000))
    filters = ica_filters(train[:20_000], n_components=min(config.ica_components, train[0].numel()), seed=0)
    ref = train[-config.n_gen:]
    sigma_data = float(train.reshape(len(train), -1).var(0).mean().sqrt())
    wiener = WienerDenoiser.from_samples(train.reshape(len(train), -1).double())
    return Reference(train, test[: config.n_eval], ref, filters, moments(train), wiener, sigma_data), clone


def make_model(config: ImagesConfig, ref: Reference, seed: int) -> torch.nn.Module:
    """The denoiser of an arm, initialised from ``seed`` (identical for both arms of a seed)."""
    gen = torch.Generator().manual_seed(seed)
    if config.model == "mlp":
        from easyhard.models.mlp import MLPConfig, MLPDenoiser

        return MLPDenoiser(MLPConfig(d=ref.train[0].numel(), width=config.width, depth=config.depth,
                                     sigma_data=ref.sigma_data), gen)
    from easyhard.models.unet import UNetConfig, make_unet

    c, h = ref.train.shape[1], ref.train.shape[2]
    preset = UNetConfig.preset(config.unet_preset)
    sides = [h // 2**k for k in range(len(preset.multipliers))]
    attention = tuple(r for r in preset.attention_resolutions if r in sides) or (sides[-1],)  # preset's levels, else the lowest
    return make_unet(UNetConfig.preset(config.unet_preset, image_size=h, channels=c, attention_resolutions=attention),
                     gen)


def _sample_metrics(gen: torch.Tensor, ref: Reference) -> dict:
    from easyhard.metrics.images import covariance_error, kurtosis_error, mode_variances, sparsity_error

    zero = torch.zeros(ref.train[0].numel(), dtype=torch.float64)
    return {"E_Sigma": covariance_error(gen, ref.train_moments),
            "E_R": sparsity_error(gen, ref.ref, ref.filters, zero),
            "E_K": kurtosis_error(gen, ref.ref, ref.filters, zero),
            "mode_variances": mode_variances(gen, ref.train_moments).tolist()}


def _generate(denoiser, config: ImagesConfig, ref: Reference) -> torch.Tensor:
    from easyhard.diffusion.samplers import SamplerNoise, sample

    noise = SamplerNoise.draw((config.n_gen, *ref.train.shape[1:]), torch.Generator().manual_seed(20_000))
    with torch.no_grad():
        return sample(denoiser, config.schedule(), noise.initial.shape, steps=config.sampler_steps, noise=noise)


def floors(config: ImagesConfig, ref: Reference) -> dict:
    """Gaussian MMSE per level, the plug-in Wiener test loss, and the sampling and sampler floors."""
    from easyhard.diffusion.denoiser import CoefficientDenoiser
    from easyhard.metrics.images import eps_loss_per_level, gaussian_mmse_eps

    schedule = config.schedule()
    wiener = CoefficientDenoiser(ref.wiener)
    abar = torch.stack([torch.as_tensor(schedule.alpha_bar(i), dtype=torch.float64) for i in config.eval_indices])
    l_gauss = gaussian_mmse_eps(ref.eigenvalues, abar)
    l_test = eps_loss_per_level(wiener, ref.test, schedule, config.eval_indices)
    sampling = _sample_metrics(ref.train[: config.n_gen], ref)
    sampler = _sample_metrics(_generate(wiener, config, ref).float(), ref)
    return {"L_G": l_gauss.tolist(), "L_G_test": l_test.tolist(),
            "sampling_floor": {k: v for k, v in sampling.items() if k != "mode_variances"},
            "sampler_floor": {k: v for k, v in sampler.items() if k != "mode_variances"}}


def run_arm(config: ImagesConfig, ref: Reference, data: torch.Tensor, arm: str, seed: int, out_dir: str) -> dict:
    """Train one arm and measure it at every checkpoint; returns its curves."""
    from easyhard.diffusion.denoiser import CoefficientDenoiser
    from easyhard.metrics.images import eps_loss_per_level, wiener_distance
    from easyhard.train.diffusion import train_diffusion

    torch.set_num_threads(1)
    schedule = config.schedule()
    model = make_model(config, ref, seed)
    wiener = CoefficientDenoiser(ref.wiener)
    curves: dict[str, list] = {"steps": [], "loss": [], "delta_W": [], "E_Sigma": [], "E_R": [], "E_K": [],
                               "mode_variances": []}

    def measure(step, net, _ema):
        net.eval()  # the MLP and the U-Net are Denoisers: net(x_t, level)
        with torch.no_grad():
            curves["loss"].append(eps_loss_per_level(net, ref.test, schedule, config.eval_indices).tolist())
            curves["delta_W"].append(wiener_distance(net, wiener, ref.test, schedule, config.eval_indices).tolist())
        for key, value in _sample_metrics(_generate(net, config, ref), ref).items():
            curves[key].append(value)
        curves["steps"].append(step)
        net.train()

    result = train_diffusion(model, data, schedule, config.train_config(seed), Path(out_dir) / f"{arm}-seed{seed}",
                             on_checkpoint=measure)
    return {"arm": arm, "seed": seed, **curves, "train_loss": result.train_loss, "images_per_s": result.images_per_s}


def run_images(config: ImagesConfig, out_dir: str | Path, progress: Callable[[str], None] | None = None) -> dict:
    """Both arms for every seed (in ``config.workers`` processes), then the comparisons and checks."""
    ref, clone = prepare(config)
    reference = floors(config, ref)
    jobs = [(arm, seed) for seed in config.seeds for arm in ARMS]
    runs = []
    with ProcessPoolExecutor(max_workers=min(config.workers, len(jobs)),
                             mp_context=__import__("multiprocessing").get_context("spawn")) as pool:
        futures = [pool.submit(run_arm, config, ref, ref.train if arm == "real" else clone, arm, seed, str(out_dir))
                   for arm, seed in jobs]
        for fut, (arm, seed) in zip(futures, jobs):
            runs.append(fut.result())
            if progress is not None:
                progress(f"{arm} seed {seed}")
    return {"config": config.to_dict(), "reference": reference, "runs": runs,
            "checks": checks(config, reference, runs), "emergence": emergence(ref, runs)}


def _pair(runs: list[dict], seed: int) -> tuple[dict, dict]:
    by = {(r["arm"], r["seed"]): r for r in runs}
    return by[("real", seed)], by[("clone", seed)]


def checks(config: ImagesConfig, reference: dict, runs: list[dict]) -> dict:
    """The acceptance criteria of issue 6 (docs/theory/images.md section 9), from the runs' own numbers."""
    from easyhard.metrics.images import convergence_step

    low = [k for k, i in enumerate(config.eval_indices) if i <= 50]
    early_levels = [k for k, i in enumerate(config.eval_indices) if i <= 100]
    l_test = np.asarray(reference["L_G_test"])
    out = {"seeds": {}}
    for seed in config.seeds:
        real, clone = _pair(runs, seed)
        steps = np.asarray(real["steps"])
        lr, lc = np.asarray(real["loss"]), np.asarray(clone["loss"])
        gap = np.abs(lc - lr) / lr  # (n_ckpt, levels)
        early = (steps >= config.first) & (steps <= 3 * config.first)
        enough = len(steps) > 4  # the 90% rule averages the last 3 checkpoints after step 0
        tau_sigma = convergence_step(steps[1:], real["E_Sigma"][1:]) if enough else None
        tau_r = convergence_step(steps[1:], real["E_R"][1:]) if enough else None
        row = {
            "early_max_gap_low_noise": float(gap[early][:, early_levels].max()) if early.any() else None,
            "final_gap_low_noise": float(gap[-1, low].min()),
            "real_final_ratio_low_noise": (lr[-1, low] / l_test[low]).tolist(),
            "clone_min_ratio": float((lc[1:] / l_test).min()),
            "tau_Sigma": tau_sigma, "tau_R": tau_r,
            "E_R_final_real": float(np.mean(real["E_R"][-3:])), "E_R_final_clone": float(np.mean(clone["E_R"][-3:])),
            "delta_W_argmin_step": [int(steps[1:][np.argmin(np.asarray(real["delta_W"])[1:, k])])
                                    for k in range(len(config.eval_indices))],
        }
        row["pass"] = {
            "early_agreement": row["early_max_gap_low_noise"] is not None and row["early_max_gap_low_noise"] <= 0.10,
            "separate_later": row["final_gap_low_noise"] >= 0.10,
            "real_below_gaussian": max(row["real_final_ratio_low_noise"]) <= 0.90,
            "clone_not_below_gaussian": row["clone_min_ratio"] >= 0.98,
            "covariance_before_higher_order": tau_sigma is not None and tau_r is not None and 3 * tau_sigma <= tau_r,
            "higher_order_error": row["E_R_final_real"] <= 0.8 and row["E_R_final_clone"] >= 0.95,
        }
        out["seeds"][seed] = row
    out["all_pass"] = all(all(r["pass"].values()) for r in out["seeds"].values())
    return out


def emergence(ref: Reference, runs: list[dict]) -> dict:
    """PCA-mode emergence steps and the power law tau_k ~ lambda_k^-beta per real-arm seed (Protocol D)."""
    from easyhard.metrics.images import emergence_law, emergence_steps

    out = {}
    eig = ref.eigenvalues.numpy()
    for r in runs:
        if r["arm"] != "real":
            continue
        keep = eig > 1e-12 * eig.max()  # modes with variance in the data (all but null directions)
        variances = np.clip(np.asarray(r["mode_variances"])[:, keep], 0.0, None)
        tau, crossed = emergence_steps(np.asarray(r["steps"], dtype=float), variances, eig[keep])
        row = {"modes_crossed": int(crossed.sum()), "modes": int(len(crossed))}
        try:
            fit = emergence_law(tau, eig[keep], n_boot=500, seed=r["seed"])
            row |= {"beta": fit.beta, "interval": list(fit.interval)}
        except ConfigError as err:  # too few modes crossed within the run: reported, not fitted
            row |= {"beta": None, "interval": None, "note": str(err)}
        out[str(r["seed"])] = row
    return out


# ============================================================================================ experiment
#: field values of the profiles over the :class:`ImagesConfig` defaults (``quick``: the embedded patches on
#: the CPU; ``full``: CIFAR-10 from ``data_dir`` with a U-Net on one GPU; ``smoke``: seconds, every code path)
PROFILES: dict[str, dict] = {
    "smoke": {"n_train": 2000, "n_test": 500, "n_eval": 64, "n_gen": 256, "steps": 40, "first": 10, "per_decade": 4,
              "batch_size": 64, "width": 32, "depth": 2, "ica_components": 8, "sampler_steps": 4,
              "eval_indices": (10, 300), "seeds": (0,), "workers": 1},
    "quick": {},
    "full": {"data": "cifar10", "model": "unet", "batch_size": 128, "lr": 2e-4, "steps": 200_000, "warmup": 5000,
             "n_train": 50_000, "n_test": 10_000, "seeds": (0, 1, 2), "device": "auto"},
}


def _run(config: ImagesConfig, ctx: RunContext | None = None) -> dict:
    """:func:`run_images` in ``ctx.out_dir`` (progress: one unit per trained arm)."""
    ctx = ctx or RunContext()
    return run_images(config, ctx.out_dir, lambda label: ctx.progress(1, label))


def report_images(results: dict, out: Path) -> tuple[list[str], str]:
    """The loss-ratio, sample-error and Wiener-distance figures and the Markdown section."""
    from easyhard.report.images import plot_delta_w, plot_loss_ratio, plot_sample_errors, render_images

    ratio = plot_loss_ratio(results, out / "images_loss_ratio.png")
    errors = plot_sample_errors(results, out / "images_sample_errors.png")
    dist = plot_delta_w(results, out / "images_delta_w.png")
    figures = {"test loss over the Gaussian MMSE, real vs clone": ratio.name,
               "covariance and higher-order errors of generated samples": errors.name,
               "distance to the Wiener denoiser": dist.name}
    return list(figures.values()), render_images(results, figures)


def summarize_images(results: dict) -> list[str]:
    """Pass/fail of each check per seed."""
    lines = [f"seed {seed}: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in row["pass"].items())
             for seed, row in results["checks"]["seeds"].items()]
    return lines + [f"image checks pass: {results['checks']['all_pass']}"]


#: the most seeds ``--seeds N`` accepts (each trains two arms; larger studies belong in a sweep)
MAX_SEEDS = 10_000


def _seed_count(text: str) -> tuple[int, ...]:
    """``--seeds N``: the seeds 0, ..., N - 1."""
    try:
        n = check_int_at_least("--seeds", int(text), 1)
    except ValueError:
        n = None
    if n is None or n > MAX_SEEDS:
        raise ConfigError(f"--seeds must be an integer in [1, {MAX_SEEDS}] (got {text!r})") from None
    return tuple(range(n))


def images_resources(config: ImagesConfig):
    """Two arms per seed, each ``steps`` training steps of ``batch_size`` plus, at every evaluation, ``n_gen``
    samples of ``sampler_steps`` denoiser calls and ``n_eval`` loss inputs
    (:func:`easyhard.experiments.resources.dense_training`; a U-Net counted as 100 x the MLP's flops);
    memory: the training and test data (float32) and the generated samples."""
    from easyhard.experiments.resources import Resources, dense_training, mlp_params

    d = 3 * config.patch_size**2 if config.data == "patches" else 3 * 32 * 32
    params = mlp_params(d, config.width, config.depth) * (1 if config.model == "mlp" else 100)
    arms = 2 * len(config.seeds)
    inputs = config.steps * config.batch_size + len(config.eval_indices) * (
        config.n_gen * config.sampler_steps / 3 + config.n_eval)  # a forward pass is a third of a step
    work = dense_training(params, inputs, 1, arms, config.device)
    data = 4.0 * d * (3 * config.n_train + config.n_test + 4 * config.n_gen)
    return Resources(work.memory_bytes / arms * min(arms, config.workers) + data, work.seconds / min(arms, config.workers))


IMAGES = Experiment(
    "images", ImagesConfig, _run, "simplicity bias on natural images: a real arm against its Gaussian clone",
    profiles={name: PROFILES[name].copy for name in PROFILES}, report=report_images,
    options=(Option("--data", "data", "patches, cifar10 or folder"),
             Option("--data-dir", "data_dir", "CIFAR-10 Python batches, or a folder of PNG/JPEG images"),
             Option("--compile", "compile", "torch.compile the model (CUDA)", is_flag=True),
             Option("--steps", "steps", "training steps per arm"),
             Option("--seeds", "seeds", "number of seeds (each trains a real and a clone arm)", _seed_count),
             Option("--workers", "workers", "arms trained in parallel processes"),
             Option("--device", "device", "cpu, cuda or auto")),
    summary=summarize_images, total=lambda config: 2 * len(config.seeds), resources=images_resources)
