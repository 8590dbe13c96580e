"""The ``easyhard`` command: parses options into configs and calls the library and the experiments.

Bad input exits with code 2 and one line on stderr naming the parameter; no traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import click

from easyhard._validate import ConfigError
from easyhard.experiments._text import fmt_num, parse_dims, text_table
from easyhard.runs.cells import CellsFailed
from easyhard.theory.problem import MCMSettings, NeuronSettings
from easyhard.train.online import DivergenceError

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _settings_options(cls, only: tuple[str, ...] | None = None):
    """Click options generated from a settings dataclass: ``--beta-u`` for the field beta_u, with the field's
    type, default and ``metadata["help"]`` (``only``: a subset of the fields, in declaration order)."""
    import typing

    hints = typing.get_type_hints(cls)

    def decorate(func):
        for f in reversed([f for f in dataclasses.fields(cls) if only is None or f.name in only]):
            scalar = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
            func = click.option(_flag(f.name), f.name, type=scalar[0], default=f.default,
                                show_default=f.default is not None, help=f.metadata.get("help"))(func)
        return func

    return decorate


@contextlib.contextmanager
def _option_errors(names):
    """Errors that start with a field name name its option instead (``n_boot`` -> ``--n-boot``); ``names``: field
    names, or a mapping of field names to their options."""
    flags = dict(names) if isinstance(names, dict) else {n: _flag(n) for n in names}
    try:
        yield
    except ConfigError as err:
        message = str(err)
        for name, flag in sorted(flags.items(), key=lambda item: -len(item[0])):
            if message.startswith((name + " ", name + ":")):
                message = flag + message[len(name):]
                break
        raise ConfigError(message) from None


def _settings(cls, values: dict):
    """``cls`` from the command-line values of its fields; an error names the option (``--beta-u``)."""
    names = [f.name for f in dataclasses.fields(cls)]
    with _option_errors(names):
        return cls(**{name: values.pop(name) for name in names if name in values})


_json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON object")
_model_options = _settings_options(MCMSettings)
_time_option = _settings_options(NeuronSettings, ("t",))
_neuron_options = _settings_options(NeuronSettings, ("activation", "a_out", "skip"))


_DEBUG = {"on": False}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="easyhard")
@click.option("--debug", is_flag=True, help="print the full traceback of an unexpected error")
def cli(debug):
    """easyhard: how diffusion models learn data statistics, from easy to hard."""
    _DEBUG["on"] = debug


@cli.command()
@_model_options
@_time_option
@_neuron_options
@click.option("--k-max", type=int, default=8, show_default=True, help="highest Hermite order considered")
@click.option("--alpha-u-learned", type=float, default=0.5, show_default=True,
              help="alpha_u at which the conditional exponent of v is cross-checked (coupled latents)")
@_json_option
def exponents(k_max, alpha_u_learned, as_json, **problem):
    """Diffusion information exponent of u and v for a single-neuron denoiser."""
    from easyhard.theory import diffusion_exponents, hermite_coefficients

    mcm, settings = _settings(MCMSettings, problem), _settings(NeuronSettings, problem)
    model, neuron = mcm.model(), settings.neuron(mcm)
    with _option_errors(["k_max", "alpha_u_learned"]):
        result = diffusion_exponents(model, neuron, k_max, alpha_u_learned)
    f = hermite_coefficients(neuron, k_max).tolist()
    if as_json:
        click.echo(json.dumps({"model": model.to_dict() | {"d": None}, "neuron": neuron.to_dict(), "hermite_f": f,
                               "directions": {k: e.to_dict() for k, e in result.items()}}))
        return
    rows = [[k, fmt_num(e.exponent, "d"), fmt_num(e.slope, ".3f"), e.term or "-", fmt_num(e.coefficient), e.samples,
             e.step, "" if e.conditional_on is None else f"alpha_u = {e.conditional_on['alpha_u']}"]
            for k, e in result.items()]
    click.echo(text_table(["dir", "k*", "slope", "leading term", "coefficient", "samples", "step", "given"], rows))
    click.echo("Hermite f_k(t): " + ", ".join(f"f{k}={v:.4g}" for k, v in enumerate(f)))


@cli.command("oracle-mse")
@_model_options
@_time_option
@_json_option
def oracle_mse(as_json, **problem):
    """Per-direction MSE of the Bayes-optimal and the Wiener denoiser (quadrature)."""
    from easyhard.oracles import per_direction_mse

    mcm, t = _settings(MCMSettings, problem), _settings(NeuronSettings, problem).t
    result = per_direction_mse(mcm.model(), t)
    if as_json:
        click.echo(json.dumps(result))
        return
    rows = [[k, f"{r['bayes']:.6f}", f"{r['linear']:.6f}", f"{r['linear'] - r['bayes']:.6f}"] for k, r in result.items()]
    click.echo(text_table(["dir", "bayes", "linear (Wiener)", "gain"], rows))


@cli.command()
@_model_options
@_time_option
@_neuron_options
@_json_option
@click.option("--direction", default="v", show_default=True, help="u or v (the escape SDE needs order k >= 3)")
@click.option("--zeta", type=float, default=None, help="escape parameter zeta = k|c_k|/(eps G^2) [default: 0.3]")
@click.option("--eps", type=float, default=None, help="step constant eps of eta = eps/d^(k/2) (instead of --zeta)")
@click.option("--dims", default="32,64,128,256,512,1024", show_default=True,
              help="comma-separated dimensions d (>= 8) for the predicted step and median")
@click.option("--k-max", type=int, default=8, show_default=True, help="highest Hermite order considered")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="weak-recovery threshold |alpha|")
def calibrate(as_json, direction, zeta, eps, dims, k_max, threshold, **problem):
    """Step size eta = eps/d^(k/2) and predicted median samples n_med ~ d^(k-1) for online SGD."""
    from easyhard._validate import check_distinct
    from easyhard.theory import calibrate as calibrate_step
    from easyhard.theory.calibration import check_dimension

    mcm, settings = _settings(MCMSettings, problem), _settings(NeuronSettings, problem)
    model, neuron = mcm.model(), settings.neuron(mcm)
    if zeta is not None and eps is not None:
        raise ConfigError("--zeta and --eps are mutually exclusive (zeta = k |c_k| / (eps G^2))")
    dims = [check_dimension(d, "--dims", 8) for d in check_distinct("--dims", parse_dims(dims))]
    with _option_errors(["k_max", "zeta", "eps", "threshold", "direction"]):
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
    click.echo(f"T*(zeta) = {fmt_num(result.t_star)}, n_med/d^{k - 1} = {fmt_num(result.n_med_coefficient)}; "
               f"barrier s_c = {result.barrier:.3g}, threshold {result.threshold:g} needs d >= {result.min_dimension}")
    click.echo(text_table(["d", "step eta", "n_med", f"n_med/d^{k - 1}"],
                          [[r["d"], f"{r['step']:.4g}", fmt_num(r["n_med"], ".4g"),
                            fmt_num(None if r["n_med"] is None else r["n_med"] / r["d"] ** (k - 1))] for r in rows]))
    for warning in warnings:
        click.echo(f"warning: {warning}")


# ----- reproduce: a command generated from the experiment registry ------------------------------------------

def _value(experiment, key: str, text: str):
    """A command-line value for field ``key``: the text itself for string fields, else read as TOML."""
    from easyhard.experiments.registry import field_types
    from easyhard.runs import parse_value

    if str in field_types(experiment, key) and text.lower() not in ("none", "null"):
        return text
    try:
        return parse_value(text)
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def _assignments(experiments: dict, sets: tuple[str, ...]) -> dict[str, dict]:
    """``--set FIELD=VALUE`` (one experiment) or ``--set NAME.FIELD=VALUE`` (several) -> values per experiment."""
    values: dict[str, dict] = {name: {} for name in experiments}
    for text in sets:
        key, eq, raw = text.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--set must look like FIELD=VALUE (got {text!r})")
        if len(experiments) == 1:
            name = next(iter(experiments))
        else:
            name, _, key = key.partition(".")
            if name not in experiments or not key:
                raise ConfigError(f"--set needs NAME.FIELD=VALUE with NAME one of {', '.join(experiments)} "
                                  f"(got {text!r})")
        values[name][key] = _value(experiments[name], key, raw.strip())
    return values


def _profile(profile: str | None, quick: bool, full: bool) -> str | None:
    chosen = [p for p, on in (("quick", quick), ("full", full)) if on] + ([profile] if profile else [])
    if len(set(chosen)) > 1:
        raise ConfigError(f"--profile, --quick and --full choose one profile (got {', '.join(chosen)})")
    return chosen[0] if chosen else None


def _run_job(experiments: dict, configs: dict, out_dir: str, cells, profile: str | None, restart: bool) -> None:
    """Run each experiment with a progress bar, print its summary, then write results, run.json and report."""
    from easyhard.runs.reproduce import run_command, run_experiments, write_outputs

    start = time.perf_counter()
    results = {}
    for name, experiment in experiments.items():
        config = configs[name]
        length = experiment.total(config) if experiment.total is not None else 1
        with click.progressbar(length=length, label=name, file=sys.stderr, item_show_func=lambda x: x) as bar:
            results |= run_experiments([(name, config)], out_dir, cells,
                                       lambda *_: (lambda advance=1, label=None: bar.update(advance, label)),
                                       restart=restart)
        if experiment.summary is not None:
            click.echo("\n".join(experiment.summary(results[name])))
    jobs = [(name, configs[name]) for name in experiments]
    paths = write_outputs(out_dir, results, {**run_command(jobs, profile), "argv": ["easyhard", *sys.argv[1:]]})
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - start:.1f} s")


def _checked_configs(experiments: dict, profile: str | None, values: dict, flags: dict, force: bool
                     ) -> tuple[dict, dict]:
    """Each experiment's config, validated before any work: fields (errors name the option where one sets the
    field), the device this machine has, and the memory and time it would take (refused above the bounds of
    :mod:`easyhard.experiments.resources` unless ``force``). Returns the configs and the estimates by name."""
    from easyhard._validate import check_device_available
    from easyhard.experiments.registry import build_config
    from easyhard.experiments.resources import check_resources

    configs = {}
    with _option_errors(flags):
        for name, experiment in experiments.items():
            config = configs[name] = build_config(experiment, profile, values[name])
            if isinstance(getattr(config, "device", None), str):
                check_device_available("device", config.device)
    estimates = {name: check_resources(f"reproduce {name}", experiments[name].resources(config), force)
                 for name, config in configs.items() if experiments[name].resources is not None}
    return configs, estimates


def _announce(estimate, what: str) -> None:
    """Say on stderr what a large run will take (over 10 minutes or 2 GiB), before it starts."""
    if estimate.seconds > 600 or estimate.memory_bytes > 2 * 2**30:
        click.echo(f"easyhard: {what}: estimated {estimate.describe()} (rough)", err=True)


def _experiment_command(names: tuple[str, ...], prog: str) -> click.Command:
    """The ``reproduce`` command of these experiments: profile flags, --out, --set, backend options and each
    experiment's aliases (an alias given on the command line sets the field of every experiment that has it)."""
    from easyhard.experiments.registry import get_experiment

    experiments = {name: get_experiment(name) for name in names}
    aliases: dict[str, list] = {}
    for name, experiment in experiments.items():
        for option in experiment.options:
            aliases.setdefault(option.flag, []).append((name, option))
    profiles = sorted({p for e in experiments.values() for p in e.profiles})
    params = [
        click.Option(["--profile"], default=None, help=f"named settings: {', '.join(profiles) or 'none'} "
                                                       "[default: quick]"),
        click.Option(["--quick"], is_flag=True, help="the CPU profile (default)"),
        click.Option(["--full"], is_flag=True, help="the full profile (meant for a GPU)"),
        click.Option(["--out", "out_dir"], default="easyhard-out", show_default=True, help="output folder"),
        click.Option(["--set", "sets"], multiple=True, metavar="FIELD=VALUE",
                     help="set a config field (dotted for nested settings; NAME.FIELD with several experiments)"),
        click.Option(["--backend"], type=click.Choice(["local", "ray"]), default=None,
                     help="run independent cells in local worker processes or on Ray [default: in this process]"),
        click.Option(["--address"], default=None, help="Ray cluster to join (with --backend ray)"),
        click.Option(["--ray-timeout"], type=float, default=30.0, show_default=True,
                     help="seconds within which the Ray cluster at --address must answer"),
        click.Option(["--force"], is_flag=True, help="run even if the estimated memory or time exceeds the bounds"),
        click.Option(["--restart"], is_flag=True,
                     help="discard saved training state in OUT that cannot be used (corrupted, another config) "
                          "and start over [default: stop with an error naming the file]"),
    ]
    for flag, owners in aliases.items():
        option = owners[0][1]
        dest = "alias_" + flag.lstrip("-").replace("-", "_")
        params.append(click.Option([flag, dest], is_flag=option.is_flag, default=None if not option.is_flag else False,
                                   help=option.help or f"sets {option.field}"))

    def callback(profile, quick, full, out_dir, sets, backend, address, ray_timeout, force, restart, **given):
        from easyhard._validate import check_out_dir

        profile = _profile(profile, quick, full)
        check_out_dir("--out", out_dir)
        values = _assignments(experiments, sets)
        flags = {}
        for flag, owners in aliases.items():
            raw = given["alias_" + flag.lstrip("-").replace("-", "_")]
            if raw is None or raw is False:
                continue
            for name, option in owners:
                flags[option.field.rpartition(".")[2]] = flag
                value = True if option.is_flag else (option.parse(raw) if option.parse else
                                                     _value(experiments[name], option.field, raw))
                values[name].setdefault(option.field, value)
        if address is not None and backend != "ray":
            raise ConfigError("--address needs --backend ray")
        configs, estimates = _checked_configs(experiments, profile, values, flags, force)
        cells = None
        if backend is not None:
            from easyhard.runs import make_backend
            from easyhard.runs.cells import BackendCells

            cells = BackendCells(make_backend(backend, address=address, connect_timeout=ray_timeout))
        for name, estimate in estimates.items():  # all checks passed: say what the run will take
            _announce(estimate, f"reproduce {name}")
        if profile == "full" and any(getattr(c, "device", "cuda") == "cpu" for c in configs.values()):
            click.echo("easyhard: warning: the full profile is sized for one GPU; on the CPU it takes hours", err=True)
        _run_job(experiments, configs, out_dir, cells, profile, restart)

    from easyhard.experiments.registry import names as registered

    doc = "; ".join(f"{name}: {e.description}" for name, e in experiments.items()) + (
        f". One experiment: easyhard reproduce NAME [OPTIONS], NAME one of {', '.join(registered())}."
        if len(experiments) > 1 else ".")
    return click.Command(prog, params=params, callback=callback, help=doc,
                         context_settings={"help_option_names": ["-h", "--help"]})


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
             add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def reproduce(args):
    """Reproduce results into OUT (report.md, results.json, run.json, figures): reproduce [NAME] [OPTIONS].

    NAME is a registered experiment (theory, staircase, scaling, images, memorization, exponents, recovery,
    ...); without NAME the main job runs: the theory report, the staircase and the scaling laws.
    `easyhard reproduce NAME --help` lists the options of NAME.
    """
    from easyhard.experiments.registry import MAIN_JOB, names

    args = list(args)
    if args and not args[0].startswith("-"):
        name = args.pop(0)
        if name not in names():
            raise ConfigError(f"experiment must be one of {', '.join(names())} (got {name!r})")
        command = _experiment_command((name,), f"easyhard reproduce {name}")
    else:
        command = _experiment_command(MAIN_JOB, "easyhard reproduce")
    command.main(args, prog_name=command.name, standalone_mode=False)


@cli.command()
@click.argument("out_dir")
def report(out_dir):
    """Rebuild OUT/report.md and every figure from OUT/results.json alone."""
    from easyhard._validate import check_out_dir
    from easyhard.runs.reproduce import rebuild_report

    check_out_dir("OUT", out_dir)

    paths = rebuild_report(out_dir)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


class _SweepFailed(Exception):
    """Some runs of a sweep failed: reported after the summary, exit code 1."""


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, help="output folder: runs/<id>/, results.parquet, sweep.json")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="fix a config field (repeatable)")
@click.option("--grid", "grids", multiple=True, metavar="FIELD=V1,V2,...",
              help="sweep a config field over these values (repeatable; replaces the file's values)")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local worker processes or Ray tasks")
@click.option("--address", default=None, help="Ray cluster to join [default: start a local Ray instance]")
@click.option("--ray-timeout", type=float, default=30.0, show_default=True,
              help="seconds within which the Ray cluster at --address must answer")
@click.option("--workers", type=int, default=None, help="runs at a time (local Ray: its CPUs) [default: CPU count]")
@click.option("--gpus-per-run", type=float, default=None,
              help="GPUs per Ray task [default: 1 if the cluster has GPUs and the config a device field, else 0]")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads per run (0: torch's default)")
@click.option("--dry-run", is_flag=True, help="list the runs (id, swept values, done or pending) without running")
@click.option("--force", is_flag=True, help="run even if the estimated memory or time exceeds the bounds")
def sweep(file, out_dir, sets, grids, backend, address, ray_timeout, workers, gpus_per_run, threads, dry_run, force):
    """Run the parameter sweep in the TOML FILE into OUT; runs already done there are skipped.

    FILE names the experiment, fixed fields ([base]) and the grid ([grid]); see docs/sweeps.md.
    """
    from easyhard._validate import check_out_dir
    from easyhard.runs import load_spec, make_backend, parse_grid, parse_set, plan_sweep, run_sweep, with_overrides
    from easyhard.runs.sweep import check_table_extra

    check_out_dir("--out", out_dir)
    spec = with_overrides(load_spec(file), [parse_set(s) for s in sets], [parse_grid(g) for g in grids])
    plan = plan_sweep(spec, out_dir)
    n_done = sum(state == "done" for _, state in plan)
    if dry_run:
        swept = list(spec.grid)
        rows = [[run.run_id, *(str(run.swept[k]) for k in swept), state] for run, state in plan]
        click.echo(text_table(["run_id", *swept, "state"], rows))
        click.echo(f"{len(plan)} runs of {spec.experiment}: {n_done} done, {len(plan) - n_done} to run")
        return
    check_table_extra()
    runner = make_backend(backend, workers=workers, address=address, gpus_per_run=gpus_per_run, threads=threads,
                          connect_timeout=ray_timeout)
    _check_sweep_resources(spec.experiment, [run for run, state in plan if state != "done"],
                           getattr(runner, "workers", None) or 1, force)
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


def _check_sweep_resources(experiment_name: str, runs, workers: int, force: bool) -> None:
    """The runs to do, estimated together: their time divided among ``workers``, the memory of ``workers`` runs at
    once (the largest); refused above the bounds unless ``force``."""
    from easyhard.experiments.registry import get_experiment, make_config
    from easyhard.experiments.resources import Resources, check_resources

    experiment = get_experiment(experiment_name)
    if experiment.resources is None or not runs:
        return
    estimates = [experiment.resources(make_config(experiment, run.config_dict)) for run in runs]
    parallel = min(workers, len(runs))
    _announce(check_resources(f"sweep {experiment_name}", Resources(
        max(e.memory_bytes for e in estimates) * parallel, sum(e.seconds for e in estimates) / parallel), force),
        f"sweep {experiment_name}")


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
@click.option("--out", "out_dir", required=True, help="output folder: report.md, results.json, run.json, diagnose.png")
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
    from easyhard._validate import check_out_dir
    from easyhard.experiments.diagnose import DiagnoseConfig, run_diagnose, summarize_diagnose, write_diagnosis
    from easyhard.runs.io import environment_info

    start = time.perf_counter()
    check_out_dir("--out", out_dir)
    values = {"samples": samples_dir, "train": train_dir, "test": test_dir, "thresholds": _parse_thresholds(thresholds),
              "n_boot": n_boot, "seed": seed, "max_samples": max_samples}
    with _option_errors(list(values)):
        config = DiagnoseConfig(**values)
        result = run_diagnose(config)
    inputs = result["inputs"]
    click.echo(f"diagnose: {inputs['samples']['n']} samples of shape {tuple(inputs['samples']['shape'])} against "
               f"{inputs['train']['n']} train" + ("" if test_dir is None else f" and {inputs['test']['n']} test")
               + " points", err=True)
    command = {"command": "diagnose", **{k: (list(v) if isinstance(v, tuple) else v)
                                         for k, v in dataclasses.asdict(config).items()}}
    paths = write_diagnosis(out_dir, result, command, environment_info())
    click.echo("\n".join(summarize_diagnose(result)))
    click.echo(f"report: {paths['report']} (wrote {len(paths)} files in {time.perf_counter() - start:.1f} s)")


@cli.command()
@click.option("--checkpoints", "checkpoints_dir", required=True,
              help="folder of saved checkpoints: diffusers save_pretrained folders, .safetensors or state dicts")
@click.option("--train", "train_dir", required=True, help="folder of the training data (images, .npy or .pt)")
@click.option("--test", "test_dir", required=True, help="folder of held-out data of the same law and scale")
@click.option("--out", "out_dir", required=True, help="output folder: monitor.jsonl, report.md, monitor.png")
@click.option("--twin-checkpoints", "twin_dir", default=None, help="checkpoints of a twin trained on a disjoint split")
@click.option("--twin-train", "twin_train_dir", default=None, help="folder of the twin's training split")
@click.option("--like", "like_dir", default=None,
              help="measure with the settings of the monitor that wrote this folder (its monitor.json), e.g. the "
                   "monitor attached to the training; the options below override them")
@click.option("--samples", type=int, default=None, help="samples per checkpoint for f_mem (>= 3) [256]")
@click.option("--sampler-steps", type=int, default=None, help="DDIM steps per sample (>= 1) [40]")
@click.option("--levels", "n_levels", type=int, default=None, help="noise levels of the losses [10]")
@click.option("--memorising-level", type=float, default=None,
              help="status memorising when f_mem's lower bound exceeds this, in (0, 1) [0.05]")
@click.option("--n-boot", type=int, default=None, help="bootstrap resamples (>= 10) [1000]")
def monitor(checkpoints_dir, train_dir, test_dir, out_dir, twin_dir, twin_train_dir, like_dir, samples, sampler_steps,
            n_levels, memorising_level, n_boot):
    """Generalisation and memorisation over saved checkpoints, in step order (the monitor's offline mode).

    Writes the same records, report and figure as a monitor attached to training; a folder with records
    continues after its last step. With --like, the measurements repeat those of an earlier monitor (same
    settings and noise), so its records can be compared.
    """
    from easyhard._validate import check_out_dir
    from easyhard.data.folders import load_tensor_folder
    from easyhard.monitor import MonitorConfig, saved_config
    from easyhard.monitor.offline import monitor_checkpoints

    start = time.perf_counter()
    check_out_dir("--out", out_dir)
    given = {"samples": samples, "sampler_steps": sampler_steps, "n_levels": n_levels,
             "memorising_level": memorising_level, "n_boot": n_boot}
    given = {k: v for k, v in given.items() if v is not None}
    base = MonitorConfig() if like_dir is None else saved_config(like_dir)
    with _option_errors({**{k: _flag(k) for k in given}, "n_levels": "--levels"}):
        config = dataclasses.replace(base, **given)
    if (twin_dir is None) != (twin_train_dir is None):
        raise ConfigError("--twin-checkpoints and --twin-train must be given together")
    train, test = load_tensor_folder(train_dir, "--train"), load_tensor_folder(test_dir, "--test")
    twin_train = None if twin_train_dir is None else load_tensor_folder(twin_train_dir, "--twin-train")

    def show(record: dict) -> None:
        if "error" in record:
            click.echo(f"step {record['step']}: error: {record['error']}", err=True)
            return
        f = record["f_mem"]["1/3"] if "1/3" in record["f_mem"] else next(iter(record["f_mem"].values()))
        click.echo(f"step {record['step']}: {record['status']} (held-out loss {record['test_loss_mean']:.4f}, "
                   f"f_mem {f['value']:.3f} [{f['interval'][0]:.3f}, {f['interval'][1]:.3f}])", err=True)

    records = monitor_checkpoints(checkpoints_dir, train, test, out_dir, twin_checkpoints=twin_dir,
                                  twin_train=twin_train, config=config, progress=show)
    last = next((r for r in reversed(records) if "error" not in r), None)
    if last is not None:
        best = last["recommended"]
        click.echo(f"status at step {last['step']}: {last['status']}; recommended checkpoint: step "
                   f"{best['held_out_loss_min']} (held-out loss minimum)"
                   + (f", step {best['split_similarity_peak']} (twin similarity peak)"
                      if best.get("split_similarity_peak") is not None else ""))
    click.echo(f"report: {Path(out_dir) / 'report.md'} ({len(records)} records, {time.perf_counter() - start:.1f} s)")


@cli.command("monitor-summary")
@click.argument("runs", nargs=-1, required=True)
@click.option("--predict", type=float, default=None, help="training-set size to predict the onset at [2 x largest n]")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def monitor_summary(runs, predict, as_json):
    """Memorisation onset against the training-set size over monitored runs (folders written by the monitor).

    Kaplan-Meier medians per n (runs that never memorise are censored), a power law over n with a bootstrap
    interval, and the predicted onset step for a larger n.
    """
    from easyhard.monitor.summary import summarize, summary_lines

    if predict is not None and not (math.isfinite(predict) and predict > 0):
        raise ConfigError(f"--predict must be a positive training-set size (got {predict})")
    summary = summarize(runs, predict)
    click.echo(json.dumps(summary, indent=1) if as_json else "\n".join(summary_lines(summary)))


def _command_name(argv: list[str]) -> str:
    """The subcommand named in ``argv`` (for the error line), e.g. "reproduce scaling"."""
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return "easyhard"
    if words[0] == "reproduce" and len(words) > 1 and argv.index(words[1]) == argv.index(words[0]) + 1:
        return f"easyhard reproduce {words[1]}"
    return f"easyhard {words[0]}"


def _unexpected(argv: list[str], err: BaseException) -> int:
    """One line for an unexpected error, the full trace in a log file (or on stderr with --debug); exit code 1."""
    import tempfile
    import traceback

    command = _command_name(argv)
    trace = "".join(traceback.format_exception(err))
    if _DEBUG["on"]:
        click.echo(trace, err=True, nl=False)
        where = "traceback above"
    else:
        try:
            fd, path = tempfile.mkstemp(prefix="easyhard-error-", suffix=".log")
            with open(fd, "w", encoding="utf-8") as fh:
                fh.write(f"{command}\nargv: {argv}\n\n{trace}")
            where = f"full trace in {path}; --debug prints it"
        except OSError:
            where = "run with --debug for the full trace"
    message = " ".join(str(err).split())[:300]
    click.echo(f"{command}: error: {type(err).__name__}{': ' + message if message else ''} ({where})", err=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point and the one error boundary of the command line.

    Bad input: one line on stderr naming the parameter, exit code 2. A run that fails (divergence, failed
    cells or sweep runs): one line, exit code 1. Ctrl-C: one line, exit code 130 (saved state is kept: every
    checkpoint is written atomically, so the last one is complete). Any other exception: one line naming the
    command and the error, the full trace in a log file (``--debug`` prints it), exit code 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _DEBUG["on"] = False
    try:
        cli.main(args=argv, prog_name="easyhard", standalone_mode=False)
    except ConfigError as err:
        click.echo(f"easyhard: error: {' '.join(str(err).split())}", err=True)
        return 2
    except click.UsageError as err:
        click.echo(f"easyhard: error: {' '.join(err.format_message().split())}", err=True)
        return 2
    except click.exceptions.Exit as err:
        return err.exit_code
    except (DivergenceError, _SweepFailed, CellsFailed) as err:
        click.echo(f"easyhard: error: {' '.join(str(err).split())}", err=True)
        return 1
    except (click.Abort, KeyboardInterrupt) as err:
        if isinstance(err, KeyboardInterrupt) or isinstance(err.__cause__, KeyboardInterrupt):
            click.echo("easyhard: interrupted; finished work and the last checkpoint are kept: run the same "
                       "command again to resume", err=True)
            return 130
        click.echo("easyhard: aborted", err=True)
        return 1
    except click.ClickException as err:
        click.echo(f"easyhard: error: {' '.join(err.format_message().split())}", err=True)
        return 1
    except Exception as err:  # the error boundary: no traceback reaches a user unasked
        return _unexpected(argv, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
