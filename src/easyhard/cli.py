"""The ``easyhard`` command: parses options into configs and calls the library and the experiments.

Bad input exits with code 2 and one line on stderr naming the parameter; no traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import click

from easyhard._validate import ConfigError, check_nonnegative, check_positive
from easyhard.activations import ACTIVATIONS, make_activation
from easyhard.data import COUPLINGS, LATENT_LAWS, MixedCumulantModel, make_latent_law
from easyhard.train.online import DivergenceError

_LAW_HELP = ", ".join(LATENT_LAWS) + " (two_point and bernoulli_gauss take --nu-param p, or NAME:p)"


def _model_options(func):
    """Options that define the mixed cumulant model and the time t."""
    options = [
        click.option("--nu", default="rademacher", show_default=True, help=f"latent law: {_LAW_HELP}"),
        click.option("--nu-param", type=float, default=None, help="parameter p of two_point / bernoulli_gauss"),
        click.option("--beta-u", type=float, default=5.0, show_default=True, help="covariance spike strength (>= 0)"),
        click.option("--beta-v", type=float, default=5.0, show_default=True, help="cumulant spike strength (>= 0)"),
        click.option("--coupling", default="independent", show_default=True, help=f"one of {', '.join(COUPLINGS)}"),
        click.option("--q", "coupling_q", type=float, default=1.0, show_default=True,
                     help="sign coupling: probability that nu = sign(lambda)"),
        click.option("--t", "t", type=float, default=0.5, show_default=True, help="OU time t (> 0)"),
        click.option("--json", "as_json", is_flag=True, help="print one JSON object"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _build_model(nu, nu_param, beta_u, beta_v, coupling, coupling_q, t) -> MixedCumulantModel:
    check_nonnegative("--beta-u", beta_u)
    check_nonnegative("--beta-v", beta_v)
    check_positive("--t", t)
    law = make_latent_law(nu, nu_param)
    return MixedCumulantModel.create(d=3, beta_u=beta_u, beta_v=beta_v, nu=law, coupling=coupling, q=coupling_q)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _num(x, spec=".4g") -> str:
    return "-" if x is None else format(x, spec)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="easyhard")
def cli():
    """easyhard: how diffusion models learn data statistics, from easy to hard."""


@cli.command()
@_model_options
@click.option("--activation", default="tanh", show_default=True, help=f"one of {', '.join(ACTIVATIONS)}")
@click.option("--a-out", type=float, default=1.0, show_default=True, help="fixed output scale a_t (nonzero)")
@click.option("--skip", type=float, default=None, help="skip coefficient c_t [default: e^-t]")
@click.option("--k-max", type=int, default=8, show_default=True, help="highest Hermite order considered")
@click.option("--alpha-u-learned", type=float, default=0.5, show_default=True,
              help="alpha_u at which the conditional exponent of v is cross-checked (coupled latents)")
def exponents(nu, nu_param, beta_u, beta_v, coupling, coupling_q, t, as_json, activation, a_out, skip, k_max,
              alpha_u_learned):
    """Diffusion information exponent of u and v for a single-neuron denoiser."""
    from easyhard.theory import SingleNeuron, diffusion_exponents, hermite_coefficients

    model = _build_model(nu, nu_param, beta_u, beta_v, coupling, coupling_q, t)
    neuron = SingleNeuron(make_activation(activation, model.law, beta_v, t), t, skip, a_out)
    result = diffusion_exponents(model, neuron, k_max, alpha_u_learned)
    f = hermite_coefficients(neuron, k_max).tolist()
    if as_json:
        click.echo(json.dumps({"model": model.to_dict() | {"d": None}, "neuron": neuron.to_dict(), "hermite_f": f,
                               "directions": {k: e.to_dict() for k, e in result.items()}}))
        return
    rows = [[k, _num(e.exponent, "d"), _num(e.slope, ".3f"), e.term or "-", _num(e.coefficient), e.samples, e.step,
             "" if e.conditional_on is None else f"alpha_u = {e.conditional_on['alpha_u']}"]
            for k, e in result.items()]
    click.echo(_table(["dir", "k*", "slope", "leading term", "coefficient", "samples", "step", "given"], rows))
    click.echo("Hermite f_k(t): " + ", ".join(f"f{k}={v:.4g}" for k, v in enumerate(f)))


@cli.command("oracle-mse")
@_model_options
def oracle_mse(nu, nu_param, beta_u, beta_v, coupling, coupling_q, t, as_json):
    """Per-direction MSE of the Bayes-optimal and the Wiener denoiser (quadrature)."""
    from easyhard.oracles import per_direction_mse

    model = _build_model(nu, nu_param, beta_u, beta_v, coupling, coupling_q, t)
    result = per_direction_mse(model, t)
    if as_json:
        click.echo(json.dumps(result))
        return
    rows = [[k, f"{r['bayes']:.6f}", f"{r['linear']:.6f}", f"{r['linear'] - r['bayes']:.6f}"] for k, r in result.items()]
    click.echo(_table(["dir", "bayes", "linear (Wiener)", "gain"], rows))


@cli.command()
@_model_options
@click.option("--activation", default="tanh", show_default=True, help=f"one of {', '.join(ACTIVATIONS)}")
@click.option("--a-out", type=float, default=1.0, show_default=True, help="fixed output scale a_t (nonzero)")
@click.option("--skip", type=float, default=None, help="skip coefficient c_t [default: e^-t]")
@click.option("--direction", default="v", show_default=True, help="u or v (the escape SDE needs order k >= 3)")
@click.option("--zeta", type=float, default=None, help="escape parameter zeta = k|c_k|/(eps G^2) [default: 0.3]")
@click.option("--eps", type=float, default=None, help="step constant eps of eta = eps/d^(k/2) (instead of --zeta)")
@click.option("--dims", default="32,64,128,256,512,1024", show_default=True,
              help="comma-separated dimensions d (>= 8) for the predicted step and median")
@click.option("--k-max", type=int, default=8, show_default=True, help="highest Hermite order considered")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="weak-recovery threshold |alpha|")
def calibrate(nu, nu_param, beta_u, beta_v, coupling, coupling_q, t, as_json, activation, a_out, skip, direction,
              zeta, eps, dims, k_max, threshold):
    """Step size eta = eps/d^(k/2) and predicted median samples n_med ~ d^(k-1) for online SGD."""
    from easyhard._validate import check_int_at_least
    from easyhard.theory import SingleNeuron
    from easyhard.theory import calibrate as calibrate_step

    model = _build_model(nu, nu_param, beta_u, beta_v, coupling, coupling_q, t)
    neuron = SingleNeuron(make_activation(activation, model.law, beta_v, t), t, skip, a_out)
    if zeta is not None and eps is not None:
        raise ConfigError("--zeta and --eps are mutually exclusive (zeta = k |c_k| / (eps G^2))")
    dims = [check_int_at_least("--dims", d, 8) for d in _parse_dims(dims)]
    result = calibrate_step(model, neuron, direction, zeta, eps, k_max, threshold)
    rows = [result.at_dimension(d) for d in dims]
    warnings = list(result.warnings) + [r["warning"] for r in rows if r["warning"]]
    if as_json:
        click.echo(json.dumps({"model": model.to_dict() | {"d": None}, "neuron": neuron.to_dict(),
                               "calibration": result.to_dict(), "dims": rows}))
        return
    k = result.k
    click.echo(f"direction {direction}: k = {k}, c_{k} = {result.c_k:+.4g} "
               f"({'attractive' if result.attractive else 'repelled'}), G^2 = {result.G2:.4g}, "
               f"R = G^2/c_{k}^2 = {result.R:.4g}")
    click.echo(f"zeta = {result.zeta:.4g}, eps = {result.eps:.4g}: {result.step_formula}")
    click.echo(f"T*(zeta) = {_num(result.t_star)}, n_med/d^{k - 1} = {_num(result.n_med_coefficient)}; "
               f"barrier s_c = {result.barrier:.3g}, threshold {result.threshold:g} needs d >= {result.min_dimension}")
    click.echo(_table(["d", "step eta", "n_med", f"n_med/d^{k - 1}"],
                      [[r["d"], f"{r['step']:.4g}", _num(r["n_med"], ".4g"),
                        _num(None if r["n_med"] is None else r["n_med"] / r["d"] ** (k - 1))] for r in rows]))
    for warning in warnings:
        click.echo(f"warning: {warning}")


def _staircase_options(func):
    """Overrides of the staircase profile."""
    options = [
        click.option("--dims", default=None, help="comma-separated dimensions d (>= 8) [default: the profile's]"),
        click.option("--seeds", type=int, default=None, help="seeds (ensemble members) per cell [default: profile]"),
        click.option("--steps-per-d", type=int, default=None, help="SGD steps per member, in units of d"),
        click.option("--engine", default="auto", show_default=True, help="online-SGD engine: auto, numba or torch"),
        click.option("--device", default=None, help="cpu or cuda [default: cuda for --full when available, else cpu]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _parse_dims(dims: str | None) -> tuple[int, ...] | None:
    if dims is None:
        return None
    try:
        return tuple(int(x) for x in dims.split(","))
    except ValueError:
        raise ConfigError(f"--dims must be comma-separated integers >= 8 (got {dims!r})") from None


def _staircase_config(profile, dims, seeds, steps_per_d, engine, device):
    import torch

    from easyhard.experiments import profile as staircase_profile

    overrides = {"dims": _parse_dims(dims), "seeds": seeds, "steps_per_d": steps_per_d, "engine": engine,
                 "device": device or ("cuda" if profile == "full" and torch.cuda.is_available() else "cpu")}
    return staircase_profile(profile, **{k: v for k, v in overrides.items() if v is not None})


def _run_theory():
    from easyhard.experiments import CANONICAL_SETTINGS, run_theory_report

    with click.progressbar(length=len(CANONICAL_SETTINGS) + 2, label="theory report", file=sys.stderr,
                           item_show_func=lambda name: name) as bar:
        results = run_theory_report(progress=lambda name: bar.update(1, name))
    rows = [[r["setting"]["name"], k, _num(d["exponent"], "d"), _num(d["slope"], ".3f"), d["samples"]]
            for r in results["exponents"] for k, d in r["directions"].items()]
    click.echo(_table(["setting", "dir", "k*", "slope", "samples"], rows))
    click.echo(f"\nall exponents as predicted: {results['all_match']}")
    return results


def _run_staircase(config):
    from easyhard.experiments import run_staircase

    with click.progressbar(length=config.total_member_steps() // config.seeds, label="staircase (online SGD)",
                           file=sys.stderr) as bar:
        results = run_staircase(config, progress=bar.update)
    rows = [[c["coupling"], c["d"], f"{c['final_abs_alpha_u']:.3f}", f"{c['final_abs_alpha_v']:.3f}",
             f"{c['median_recovery_u_over_d']:.2f}", _num(c.get("v_within_window"), ".0%"),
             "({:.3f}, {:.3f})".format(*c["final_direction_mean"])] for c in results["cells"]]
    click.echo(_table(["coupling", "d", "|alpha_u|", "|alpha_v|", "n_hit(u)/d", "v in window", "direction"], rows))
    click.echo(f"\nstaircase checks pass: {results['acceptance']['all_pass']}")
    return results


def _run_scaling(profile, out_dir, device):
    """The scaling laws with a progress bar over cells (finished cells are reused from OUT/cells)."""
    from pathlib import Path

    import torch

    from easyhard.experiments.scaling import profile as scaling_profile
    from easyhard.experiments.scaling import run_scaling

    device = device or ("cuda" if profile == "full" and torch.cuda.is_available() else "cpu")
    if profile == "full" and device == "cpu":
        click.echo("easyhard: warning: reproduce scaling --full is sized for one GPU; on CPU the full-engine "
                   "cells take hours", err=True)
    config = scaling_profile(profile, device)
    with click.progressbar(length=len(config.all_cells()), label="scaling laws", file=sys.stderr,
                           item_show_func=lambda label: label) as bar:
        results = run_scaling(config, Path(out_dir) / "cells", progress=lambda label: bar.update(1, label))
    rows = [[name, part["law"], ", ".join(map(str, part["fit"]["dims"])),
             "{:.3f} [{:.3f}, {:.3f}]".format(part["fit"]["kappa"], *part["fit"]["interval"])]
            for name, part in results["parts"].items()]
    click.echo(_table(["part", "predicted", "dims", "kappa (95% CI)"], rows))
    click.echo(f"\ncanonical setting: u learned, v not: {results['canonical']['u_learned_v_not']}")
    click.echo(f"scaling checks pass: {results['acceptance']['all_pass']}")
    return results, device


def _write(out_dir, config, start, **parts):
    from easyhard.experiments import write_reproduction

    paths = write_reproduction(out_dir, config, **parts)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - start:.1f} s")


@cli.group(invoke_without_command=True)
@click.option("--quick", "profile", flag_value="quick", default=True, help="CPU profile, < 10 min on 2 cores (default)")
@click.option("--full", "profile", flag_value="full", help="larger d and more seeds (meant for a GPU)")
@click.option("--out", "out_dir", default="easyhard-out", show_default=True, type=click.Path(file_okay=False),
              help="output folder")
@_staircase_options
@click.pass_context
def reproduce(ctx, profile, out_dir, dims, seeds, steps_per_d, engine, device):
    """Reproduce the headline results into OUT (report.md, results.json, figures).

    Without a subcommand this runs all parts: the theory report (exponent table, oracle MSEs), the
    staircase experiment (online SGD, independent vs sign-coupled latents) and the scaling laws.
    """
    if ctx.invoked_subcommand is not None:
        return
    start = time.perf_counter()
    config = _staircase_config(profile, dims, seeds, steps_per_d, engine, device)
    theory_results = _run_theory()
    staircase_results = _run_staircase(config)
    scaling_results, _ = _run_scaling(profile, out_dir, device)
    _write(out_dir, {"command": "reproduce", "profile": profile, "staircase": dataclasses.asdict(config)}, start,
           theory=theory_results, staircase=staircase_results, scaling=scaling_results)


@reproduce.command()
@click.option("--out", "out_dir", default="easyhard-out", show_default=True, type=click.Path(file_okay=False))
def theory(out_dir):
    """Exponent table for the canonical settings (JSON + Markdown + figure)."""
    start = time.perf_counter()
    _write(out_dir, {"command": "reproduce theory"}, start, theory=_run_theory())


@reproduce.command()
@click.option("--quick", "profile", flag_value="quick", default=True, help="CPU profile (default)")
@click.option("--full", "profile", flag_value="full", help="larger d and more seeds (meant for a GPU)")
@click.option("--out", "out_dir", default="easyhard-out", show_default=True, type=click.Path(file_okay=False))
@_staircase_options
def staircase(profile, out_dir, dims, seeds, steps_per_d, engine, device):
    """Online-SGD staircase: |alpha_u|, |alpha_v| against steps/d for independent and sign-coupled latents."""
    start = time.perf_counter()
    config = _staircase_config(profile, dims, seeds, steps_per_d, engine, device)
    _write(out_dir, {"command": "reproduce staircase", "profile": profile, "staircase": dataclasses.asdict(config)},
           start, staircase=_run_staircase(config))


@reproduce.command()
@click.option("--quick", "profile", flag_value="quick", default=True, help="CPU profile, < 10 min on 2 cores (default)")
@click.option("--full", "profile", flag_value="full", help="full engine to d = 512 and reduced simulator to d = 1024 (GPU)")
@click.option("--out", "out_dir", default="easyhard-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default=None, help="cpu or cuda [default: cuda for --full when available, else cpu]")
def scaling(profile, out_dir, device):
    """Sample-complexity laws: recovery time against d for u, v (sign-coupled) and v (independent, calibrated).

    Finished cells are kept under OUT/cells and reused when the command is run again.
    """
    start = time.perf_counter()
    results, device = _run_scaling(profile, out_dir, device)
    _write(out_dir, {"command": "reproduce scaling", "profile": profile, "device": device}, start, scaling=results)


@reproduce.command()
@click.option("--quick", "profile", flag_value="quick", default=True,
              help="embedded 8x8 patches, MLP, two seeds, CPU (default)")
@click.option("--full", "profile", flag_value="full", help="CIFAR-10 from --data-dir with a U-Net (meant for a GPU)")
@click.option("--out", "out_dir", default="easyhard-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="CIFAR-10 Python batches (--full), or a folder of PNG/JPEG images with --data folder")
@click.option("--data", "data_kind", default=None, help="patches, cifar10 or folder [default: the profile's]")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (CUDA)")
@click.option("--steps", type=int, default=None, help="training steps per arm [default: the profile's]")
@click.option("--seeds", type=int, default=None, help="number of seeds (each trains a real and a clone arm)")
@click.option("--workers", type=int, default=2, show_default=True, help="arms trained in parallel processes")
@click.option("--device", default=None, help="cpu or cuda [default: cuda for --full when available, else cpu]")
def images(profile, out_dir, data_dir, data_kind, compile_, steps, seeds, workers, device):
    """Simplicity bias on natural images: a real arm against its Gaussian clone (losses, samples, Wiener distance)."""
    import torch

    from easyhard.experiments.images import QUICK, run_images

    start = time.perf_counter()
    device = device or ("cuda" if profile == "full" and torch.cuda.is_available() else "cpu")
    overrides = {"workers": workers, "device": device, "compile": compile_}
    if profile == "full":
        overrides |= {"data": "cifar10", "model": "unet", "batch_size": 128, "lr": 2e-4,
                      "steps": 200_000, "warmup": 5000, "n_train": 50_000, "n_test": 10_000, "seeds": (0, 1, 2)}
    if steps is not None:
        overrides["steps"] = steps
    if seeds is not None:
        overrides["seeds"] = tuple(range(seeds))
    if data_kind is not None:
        overrides["data"] = data_kind
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    config = dataclasses.replace(QUICK, **overrides)
    runs = 2 * len(config.seeds)
    with click.progressbar(length=runs, label="images (real and clone arms)", file=sys.stderr,
                           item_show_func=lambda label: label) as bar:
        results = run_images(config, out_dir, progress=lambda label: bar.update(1, label))
    for seed, row in results["checks"]["seeds"].items():
        click.echo(f"seed {seed}: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in row["pass"].items()))
    click.echo(f"image checks pass: {results['checks']['all_pass']}")
    _write(out_dir, {"command": "reproduce images", "profile": profile, "images": config.to_dict()}, start,
           images=results)


@reproduce.command()
@click.option("--quick", "profile", flag_value="quick", default=True,
              help="Gaussian mixture in d = 16, n = 16..128, 4 splits x 4 seeds, CPU, < 10 min (default)")
@click.option("--full", "profile", flag_value="full", help="embedded image patches, n = 64..1024 (meant for a GPU)")
@click.option("--out", "out_dir", default="easyhard-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--data", "data_kind", default=None, help="mixture, patches or cifar10 [default: the profile's]")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="CIFAR-10 Python batches")
@click.option("--steps", type=int, default=None, help="training steps [default: the profile's]")
@click.option("--seeds", type=int, default=None, help="seeds per n [default: the profile's]")
@click.option("--device", default=None, help="cpu or cuda [default: cuda for --full when available, else cpu]")
def memorization(profile, out_dir, data_kind, data_dir, steps, seeds, device):
    """Memorisation onset tau_mem against n, and the sample-split peak before the test-loss minimum.

    The run lives in OUT/memorization (training state and per-checkpoint records): an interrupted run
    resumes from its last checkpoint, and a finished one is only re-analysed.
    """
    from pathlib import Path

    import torch

    from easyhard.experiments.memorization import profile as memorization_profile
    from easyhard.experiments.memorization import run_memorization

    start = time.perf_counter()
    config = memorization_profile(profile)
    overrides = {"device": device or ("cuda" if config.device == "cuda" and torch.cuda.is_available() else "cpu")}
    if data_kind is not None:
        overrides["data"] = data_kind
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if seeds is not None:
        overrides["seeds"] = seeds
    if steps is not None:
        overrides["train"] = dataclasses.replace(config.train, steps=steps)
    config = dataclasses.replace(config, **overrides)
    with click.progressbar(length=config.train.steps, label="memorization (ensemble training)", file=sys.stderr) as bar:
        results = run_memorization(config, Path(out_dir) / "memorization", progress=bar.update)
    for name, check in results["checks"].items():
        click.echo(f"{name}: {'pass' if check['passed'] else 'FAIL'} ({check['criterion']})")
    fit = results["fits"][str(config.threshold)]
    if "kappa" in fit:
        click.echo("tau_mem ~ n^{:.2f} [{:.2f}, {:.2f}]".format(fit["kappa"], *fit["interval"]))
    click.echo(f"memorization checks pass: {all(c['passed'] for c in results['checks'].values())}")
    _write(out_dir, {"command": "reproduce memorization", "profile": profile, "memorization": config.to_dict()}, start,
           memorization={**results, "config": config.to_dict()})


class _SweepFailed(Exception):
    """Some runs of a sweep failed: reported after the summary, exit code 1."""


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder: runs/<id>/, results.parquet, sweep.json")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="fix a config field (repeatable)")
@click.option("--grid", "grids", multiple=True, metavar="FIELD=V1,V2,...",
              help="sweep a config field over these values (repeatable; replaces the file's values)")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local worker processes or Ray tasks")
@click.option("--address", default=None, help="Ray cluster to join [default: start a local Ray instance]")
@click.option("--workers", type=int, default=None, help="runs at a time (local Ray: its CPUs) [default: CPU count]")
@click.option("--gpus-per-run", type=float, default=None,
              help="GPUs per Ray task [default: 1 if the cluster has GPUs and the config a device field, else 0]")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads per run (0: torch's default)")
@click.option("--dry-run", is_flag=True, help="list the runs (id, swept values, done or pending) without running")
def sweep(file, out_dir, sets, grids, backend, address, workers, gpus_per_run, threads, dry_run):
    """Run the parameter sweep in the TOML FILE into OUT; runs already done there are skipped.

    FILE names the experiment, fixed fields ([base]) and the grid ([grid]); see docs/sweeps.md.
    """
    from easyhard.runs import load_spec, make_backend, parse_grid, parse_set, plan_sweep, run_sweep, with_overrides
    from easyhard.runs.sweep import check_table_extra

    spec = with_overrides(load_spec(file), [parse_set(s) for s in sets], [parse_grid(g) for g in grids])
    plan = plan_sweep(spec, out_dir)
    n_done = sum(state == "done" for _, state in plan)
    if dry_run:
        swept = list(spec.grid)
        rows = [[run.run_id, *(str(run.swept[k]) for k in swept), state] for run, state in plan]
        click.echo(_table(["run_id", *swept, "state"], rows))
        click.echo(f"{len(plan)} runs of {spec.experiment}: {n_done} done, {len(plan) - n_done} to run")
        return
    check_table_extra()
    runner = make_backend(backend, workers=workers, address=address, gpus_per_run=gpus_per_run, threads=threads)
    with click.progressbar(length=len(plan) - n_done, label=f"sweep {spec.experiment} ({runner.name})",
                           file=sys.stderr) as bar:
        summary = run_sweep(spec, out_dir, backend=runner, progress=lambda run, result: bar.update(1))
    click.echo(f"{summary.done} done, {summary.skipped} skipped, {len(summary.failed)} failed of "
               f"{len(summary.run_ids)} runs; table: {summary.table}")
    if summary.failed:
        for rid, error in list(summary.failed.items())[:10]:
            click.echo(f"easyhard: run {rid} failed: {error}", err=True)
        raise _SweepFailed(f"{len(summary.failed)} of {len(summary.run_ids)} runs failed "
                           f"(see {out_dir}/runs/<id>/status.json; run the command again to retry them)")


def _parse_thresholds(text: str) -> tuple[float, ...]:
    from fractions import Fraction

    try:
        return tuple(float(Fraction(x.strip())) for x in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--thresholds must be comma-separated numbers or fractions in (0, 1), e.g. 1/4,1/3,1/2 "
                          f"(got {text!r})") from None


@cli.command()
@click.option("--samples", "samples_dir", required=True, help="folder of generated samples (images, .npy or .pt)")
@click.option("--train", "train_dir", required=True, help="folder of the training data, same format and scale")
@click.option("--test", "test_dir", default=None, help="folder of held-out data of the same law (optional)")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder: report.md, results.json, run.json, diagnose.png")
@click.option("--thresholds", default="1/4,1/3,1/2", show_default=True,
              help="d1/d2 thresholds k of the copy test, comma-separated numbers or fractions in (0, 1)")
@click.option("--n-boot", type=int, default=1000, show_default=True, help="bootstrap resamples (>= 10)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the bootstrap and of the subsets")
@click.option("--max-samples", type=int, default=None, help="diagnose a seeded random subset of this many samples")
def diagnose(samples_dir, train_dir, test_dir, out_dir, thresholds, n_boot, seed, max_samples):
    """Memorisation diagnostics of samples from any model against its training (and test) data.

    Folders hold PNG/JPEG images (read as RGB in [-1, 1]) or .npy / .pt arrays (one item or a batch
    (n, ...) per file, values as stored). Reports f_mem (d1/d2 < k) with intervals, nearest-neighbour
    distances and, with --test, the own- versus other-split similarity gap.
    """
    from easyhard._validate import check_int_at_least
    from easyhard.data.folders import load_tensor_folder
    from easyhard.experiments.diagnose import (check_inputs, check_thresholds, subsample, threshold_label,
                                               write_diagnosis)
    from easyhard.experiments.diagnose import diagnose as run_diagnosis

    start = time.perf_counter()
    thresholds = check_thresholds(_parse_thresholds(thresholds))
    check_int_at_least("--n-boot", n_boot, 10)
    if max_samples is not None:
        check_int_at_least("--max-samples", max_samples, 1)
    samples = load_tensor_folder(samples_dir, "--samples")
    train = load_tensor_folder(train_dir, "--train")
    test = None if test_dir is None else load_tensor_folder(test_dir, "--test")
    n_loaded = len(samples)
    check_inputs(samples, train, test)
    samples, subset = subsample(samples, max_samples, seed)
    click.echo(f"diagnose: {len(samples)} samples of shape {tuple(samples.shape[1:])} against {len(train)} train"
               + ("" if test is None else f" and {len(test)} test") + " points", err=True)
    result = run_diagnosis(samples, train, test, thresholds, n_boot, seed)
    result["inputs"]["samples"]["loaded"] = n_loaded
    if subset is not None:
        for row in result["closest"]:
            row["sample"] = int(subset[row["sample"]])
    config = {"command": "diagnose", "samples": str(samples_dir), "train": str(train_dir),
              "test": None if test_dir is None else str(test_dir), "thresholds": list(thresholds), "n_boot": n_boot,
              "seed": seed, "max_samples": max_samples}
    paths = write_diagnosis(out_dir, result, config)
    main_t = result["settings"]["main_threshold"]
    for m in result["memorization"]:
        click.echo(f"f_mem(d1/d2 < {threshold_label(m['threshold'])}) = {m['value']:.4f} "
                   f"[{m['interval'][0]:.4f}, {m['interval'][1]:.4f}], Wilson upper {m['wilson_upper']:.4f}"
                   + ("  <- main" if m["threshold"] == main_t and len(thresholds) > 1 else ""))
    if result["split"] is not None:
        gap = result["split"]["gap"]
        click.echo(f"own - other NN similarity gap (train vs test, {result['split']['subset_size']} each) = "
                   f"{gap['value']:.4f} [{gap['interval'][0]:.4f}, {gap['interval'][1]:.4f}]")
    for flag in result["flags"]:
        click.echo(f"flag {flag['id']}: {flag['message']}")
    click.echo(f"report: {paths['report']} (wrote {len(paths)} files in {time.perf_counter() - start:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the click group, mapping bad input to one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="easyhard", standalone_mode=False)
    except ConfigError as err:
        click.echo(f"easyhard: error: {err}", err=True)
        return 2
    except click.UsageError as err:
        click.echo(f"easyhard: error: {' '.join(err.format_message().split())}", err=True)
        return 2
    except click.exceptions.Exit as err:
        return err.exit_code
    except DivergenceError as err:
        click.echo(f"easyhard: error: {err}", err=True)
        return 1
    except _SweepFailed as err:
        click.echo(f"easyhard: error: {err}", err=True)
        return 1
    except click.Abort:
        click.echo("easyhard: aborted", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
