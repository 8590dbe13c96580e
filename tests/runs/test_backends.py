"""Backends: local processes and Ray give the same table; failures, device resolution, GPU requests, extras."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from easyhard._validate import ConfigError
from easyhard.data import MixedCumulantModel, make_latent_law
from easyhard.oracles import make_activation
from easyhard.runs import RayBackend, SweepSpec, Task, execute, expand, make_backend, run_dir, run_sweep
from easyhard.runs.backends import RAY_EXTRA_MESSAGE
from easyhard.runs.sweep import SWEEP_EXTRA_MESSAGE
from easyhard.theory import SingleNeuron, diffusion_exponents

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

# 3 activations x 2 couplings = 6 runs of quadrature (milliseconds each)
SPEC = SweepSpec("exponents", {"t": 0.4, "k_max": 6, "beta_u": 4},
                 {"activation": ("tanh", "relu", "sigmoid"), "coupling": ("independent", "sign")})


@pytest.fixture(scope="module")
def local_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    summary = run_sweep(SPEC, out, backend="local", workers=2)
    assert (summary.done, summary.skipped, summary.failed) == (6, 0, {})
    return out


def test_exponents_sweep_matches_a_direct_call(local_out):
    table = pd.read_parquet(local_out / "results.parquet")
    assert list(table["run_id"]) == [r.run_id for r in expand(SPEC)]
    assert list(table.columns[:3]) == ["run_id", "activation", "coupling"]
    assert "metrics.hermite_f" not in table.columns  # lists stay in metrics.json
    row = table[(table["activation"] == "tanh") & (table["coupling"] == "sign")].iloc[0]
    model = MixedCumulantModel.create(d=3, beta_u=4.0, beta_v=5.0, nu=make_latent_law("rademacher"), coupling="sign")
    neuron = SingleNeuron(make_activation("tanh", model.law, 5.0, 0.4), 0.4, None, 1.0)
    expected = diffusion_exponents(model, neuron, 6)
    for key in ("u", "v"):
        e = expected[key]
        assert row[f"metrics.k_{key}"] == e.exponent and row[f"metrics.term_{key}"] == e.term
        assert row[f"metrics.slope_{key}"] == pytest.approx(e.slope, rel=1e-10)
        assert row[f"metrics.coef_{key}"] == pytest.approx(e.coefficient, rel=1e-10)
    assert (row["metrics.k_u"], row["metrics.k_v"], row["metrics.v_given_alpha_u"]) == (2, 1, 0.5)
    assert row["config.beta_u"] == 4.0 and row["config.t"] == 0.4 and row["config.nu_param"] is None
    metrics = json.loads((run_dir(local_out, row["run_id"]) / "metrics.json").read_text())
    assert len(metrics["hermite_f"]) == 7
    relu = table[(table["activation"] == "relu") & (table["coupling"] == "independent")].iloc[0]
    assert relu["metrics.k_u"] == 2 and pd.isna(relu["metrics.k_v"])  # relu: no dependence on v (README)


def test_local_and_ray_give_equal_tables(local_out, tmp_path):
    pytest.importorskip("ray")
    summary = run_sweep(SPEC, tmp_path, backend="ray", workers=2)
    assert (summary.done, summary.failed) == (6, {})
    local = pd.read_parquet(local_out / "results.parquet").sort_values("run_id", ignore_index=True)
    ray_table = pd.read_parquet(tmp_path / "results.parquet").sort_values("run_id", ignore_index=True)
    pd.testing.assert_frame_equal(local, ray_table)
    statuses = [json.loads((run_dir(tmp_path, i) / "status.json").read_text()) for i in summary.run_ids]
    assert {s["backend"] for s in statuses} == {"ray"} and all(s["state"] == "done" for s in statuses)
    import ray

    assert not ray.is_initialized()  # the local instance was shut down


TOY = '''
import os
import signal
from dataclasses import dataclass
from easyhard.experiments.registry import Experiment

@dataclass(frozen=True)
class Config:
    device: str = "cpu"
    fail: bool = False
    crash: int = 0

def run(config, ctx=None):
    if config.crash == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies
    if config.fail:
        raise ValueError("no good\\nat all")
    return {"device": config.device, "n": __import__("numpy").int64(3)}

EXP = Experiment("toydev", Config, run)
'''


@pytest.fixture
def toy_device(tmp_path, monkeypatch):
    (tmp_path / "easyhard_toy_device.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "easyhard_toy_device:EXP"


def test_execute_resolves_auto_device_and_records_failures(toy_device):
    for gpu, device in ((True, "cuda"), (False, "cpu")):
        result = execute(Task("id", toy_device, {"device": "auto"}), gpu=gpu)
        assert result.state == "done" and result.device == device
        assert json.loads(result.metrics_json) == {"device": device, "n": 3}  # numpy scalars become numbers
    assert execute(Task("id", toy_device, {"device": "cpu"}), gpu=True).device == "cpu"  # only "auto" changes
    failed = execute(Task("id", toy_device, {"fail": True}))
    assert failed.state == "failed" and failed.error == "ValueError: no good at all" and failed.metrics_json is None
    assert execute(Task("id", "easyhard.nowhere:EXP", {})).error.startswith("ConfigError: experiment")


def test_ray_gpu_request_per_task():
    pytest.importorskip("ray")
    with_device = [Task("a", "x", {"device": "auto"})]
    without = [Task("a", "x", {"beta": 1.0})]
    default = RayBackend(workers=1)
    assert default._gpus_per_task(with_device, 4.0) == 1.0
    assert default._gpus_per_task(without, 4.0) == 0.0  # no device field: the run cannot use a GPU
    assert default._gpus_per_task(with_device, 0.0) == 0.0
    assert RayBackend(workers=1, gpus_per_run=0.5)._gpus_per_task(with_device, 1.0) == 0.5
    with pytest.raises(ConfigError, match="--gpus-per-run must be <= the 0 GPUs"):
        RayBackend(workers=1, gpus_per_run=1)._gpus_per_task(with_device, 0.0)
    with pytest.raises(ConfigError, match="--gpus-per-run must be >= 0"):
        RayBackend(gpus_per_run=-1)
    with pytest.raises(ConfigError, match="drop --workers"):
        RayBackend(workers=2, address="10.0.0.1:6379")
    with pytest.raises(ConfigError, match="^--workers must be <= "):
        make_backend("ray", workers=4 * (os.cpu_count() or 1) + 1)
    with pytest.raises(ConfigError, match="^--ray-timeout must be > 0"):
        make_backend("ray", address="10.0.0.1:6379", connect_timeout=-1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_address_where_nothing_listens_fails_at_once():
    ray = pytest.importorskip("ray")
    address = f"127.0.0.1:{_free_port()}"  # a closed port
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:  # refused when the backend is made, before a sweep writes anything
        make_backend("ray", address=address, connect_timeout=3)
    assert time.monotonic() - start < 3 + 2 and not ray.is_initialized()
    message = str(err.value)
    assert message.startswith(f"--address {address}: no Ray cluster answered within 3 s (ConnectionRefusedError")
    assert "--ray-timeout" in message and "\n" not in message
    with pytest.raises(ConfigError, match="^--address must be HOST:PORT, ray://HOST:PORT or auto"):
        make_backend("ray", address="ray://head:99999")


# backends.py loaded alone (the easyhard.runs package would import torch): ray.init on a port where a socket
# listens but no Ray answers; an abandoned ray.init goes on in the background, so this runs in its own process
SILENT_PORT = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("backends_alone", sys.argv[1])
backends = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backends)
backend = backends.RayBackend(address=sys.argv[2], connect_timeout=3)
start = time.monotonic()
try:
    list(backend.run([backends.Task("a", "exponents", {})]))
except backends.ConfigError as err:
    print(f"{time.monotonic() - start:.2f}", err)
"""


def test_ray_address_that_answers_but_is_no_cluster_fails_in_time():
    pytest.importorskip("ray")
    from easyhard.runs import backends

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel accepts TCP connections; nothing ever answers on them
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        done = subprocess.run([sys.executable, "-c", SILENT_PORT, backends.__file__, address],
                              capture_output=True, text=True, timeout=60)
    elapsed, message = done.stdout.strip().split(" ", 1)
    assert 3 <= float(elapsed) < 3 + 2 and done.returncode == 0
    assert message.startswith(f"--address {address}: no Ray cluster answered within 3 s (the port accepts")


def test_backend_options_are_checked():
    assert make_backend("local", workers=3).workers == 3
    assert make_backend("local", threads=0).threads is None
    bound = 4 * (os.cpu_count() or 1)
    assert make_backend("local", workers=bound).workers == bound
    for kwargs, needle in (({"workers": 0}, "--workers"), ({"address": "a:1"}, "--address needs --backend ray"),
                           ({"workers": bound + 1}, rf"^--workers must be <= {bound} \(4 per CPU"),
                           ({"gpus_per_run": 1.0}, "--gpus-per-run needs --backend ray"),
                           ({"threads": -1}, "--threads"), ({"connect_timeout": 0}, "--ray-timeout must be > 0"),
                           ({"connect_timeout": float("inf")}, "--ray-timeout must be a finite number"),
                           ({"connect_timeout": float("nan")}, "--ray-timeout must be a finite number"),
                           ({"connect_timeout": "5"}, "--ray-timeout must be a finite number of seconds > 0")):
        with pytest.raises(ConfigError, match=needle):
            make_backend("local", **kwargs)
    with pytest.raises(ConfigError, match="--backend must be one of local, ray"):
        make_backend("dask")


def test_missing_extras_give_one_line_install_hints(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ConfigError) as err:
        make_backend("ray")
    assert str(err.value) == RAY_EXTRA_MESSAGE == "`--backend ray` needs the 'ray' extra: pip install 'easyhard[ray]'"
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError) as err:
        run_sweep(SPEC, tmp_path / "out")
    assert str(err.value) == SWEEP_EXTRA_MESSAGE and "pip install 'easyhard[sweep]'" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_dying_worker_fails_its_run_and_the_sweep_goes_on(toy_device, tmp_path):
    spec = SweepSpec(toy_device, {}, {"crash": (0, 1, 2, 3)})
    summary = run_sweep(spec, tmp_path, workers=1)
    crashed = expand(spec)[1].run_id
    assert summary.done == 3 and list(summary.failed) == [crashed]
    assert summary.failed[crashed].startswith("worker process died")
    status = json.loads((run_dir(tmp_path, crashed) / "status.json").read_text())
    assert status["state"] == "failed" and status["wall_s"] is None
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 3


def test_ray_requests_gpus_and_resolves_auto_device(toy_device, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    # the Ray workers inherit PYTHONPATH (where the toy module is); the GPU is declared, not necessarily real
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
    try:
        spec = SweepSpec(toy_device, {}, {"device": ("auto", "cpu")})
        summary = run_sweep(spec, tmp_path / "out", backend="ray")
        assert (summary.done, summary.failed) == (2, {}) and ray.is_initialized()  # not ours to shut down
        for run in expand(spec):
            status = json.loads((run_dir(tmp_path / "out", run.run_id) / "status.json").read_text())
            metrics = json.loads((run_dir(tmp_path / "out", run.run_id) / "metrics.json").read_text())
            # every task held the GPU (the config has a device field); "auto" became "cuda", "cpu" stayed
            expected = "cuda" if run.swept["device"] == "auto" else "cpu"
            assert status["device"] == metrics["device"] == expected
        table = pd.read_parquet(tmp_path / "out" / "results.parquet")
        assert list(table["device"]) == ["auto", "cpu"]  # the run id and the table keep "auto"
    finally:
        ray.shutdown()
