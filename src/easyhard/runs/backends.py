"""Where sweep runs execute: local worker processes (default) or Ray tasks, behind one small interface.

A backend receives :class:`Task` s and yields batches of :class:`RunResult` s as runs finish. It never
touches the file system: the sweep driver writes each run folder as its result arrives, so the same writer
serves every backend. Both backends call :func:`execute` in the worker, which turns an exception inside a
run into a ``failed`` result (the sweep goes on); a worker that dies also yields a failed result.

- ``local``: a ``ProcessPoolExecutor`` with the ``spawn`` start method and ``workers`` processes (default
  ``os.cpu_count()``, at most ``MAX_WORKERS_PER_CPU`` per CPU), ``workers`` runs in flight; each run sets
  ``torch.set_num_threads(threads)`` (default 1). A worker that dies fails the runs in flight; the queued runs
  go on in a fresh pool. The workers end when the sweep's process dies, even by SIGKILL (Linux: the kernel
  kills them, ``PR_SET_PDEATHSIG``; elsewhere a watchdog thread in each worker exits within about a second).
- ``ray``: one ``ray.remote`` task per run, 1 CPU each, on the cluster at ``address`` or on a local instance
  with ``num_cpus=workers`` that is shut down at the end. With GPUs in the cluster, tasks of experiments
  whose config has a ``device`` field request ``gpus_per_run`` GPUs (default 1), and ``device = "auto"``
  becomes "cuda" for them ("cpu" for CPU-only tasks). Joining ``address`` fails with a one-line ConfigError
  when no Ray cluster answers within ``connect_timeout`` seconds (default 30): first a TCP connect to the
  address (a closed port or an unreachable host fails at once, without Ray's retry warnings), then
  ``ray.init`` bounded by what is left of the time. If the driver is killed (SIGKILL), the local instance's
  GCS, raylet and task workers end within a few seconds by Ray's own fate sharing; its two idle agent
  processes (dashboard agent, runtime-env agent) linger about 60 s (Ray 2.60: their last report to the dead
  GCS times out) and then exit.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from easyhard._validate import ConfigError, check_int_at_least, check_nonnegative, check_positive

BACKENDS = ("local", "ray")

RAY_EXTRA_MESSAGE = "`--backend ray` needs the 'ray' extra: pip install 'easyhard[ray]'"

MAX_WORKERS_PER_CPU = 4  # --workers above this many per CPU is refused (a typo, not a plan)
PARENT_POLL_S = 0.5  # how often the portable watchdog of a local worker looks for its parent
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class Task:
    """One run to execute: the experiment name and its full config as a JSON-able dict."""

    run_id: str
    experiment: str  # a registered name or the "module:attribute" / "file.py:attribute" behind it
    config: dict
    threads: int | None = 1  # torch threads in the worker; None keeps torch's default
    work_dir: str | None = None  # the run's working folder (resumable state), if it keeps one
    checkpoint: str | None = None  # where a single resumable computation keeps its state


@dataclass(frozen=True)
class RunResult:
    """Outcome of one run, computed in the worker and written to the run folder by the driver.

    ``metrics_json`` is the run's metrics as JSON text (so that a run whose metrics cannot be serialised
    fails in the worker, and the driver sees exactly what metrics.json will hold).
    """

    run_id: str
    state: str  # "done" or "failed"
    wall_s: float | None  # None when the worker gave no result
    started: str
    finished: str
    metrics_json: str | None = None
    error: str | None = None
    traceback: str | None = None
    device: str | None = None  # the device the run used when its config has a device field
    host: str | None = None
    environment: dict | None = None
    backend: str | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(": ")


def _json_default(value: Any) -> Any:
    """NumPy / torch scalars in metrics become Python numbers; anything else is not JSON-able."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"metric value of type {type(value).__name__} is not JSON-able")


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def failed_result(task: Task, message: str, backend: str | None = None) -> RunResult:
    """A failed result for a run whose worker gave no result (it died, or the task could not be run)."""
    now = _now()
    return RunResult(task.run_id, "failed", None, now, now, error=message, backend=backend)


def execute(task: Task, gpu: bool | None = None) -> RunResult:
    """Run one task in the current process and return its result; never raises for a failing run.

    ``gpu``: whether this worker holds a GPU, which resolves a config's ``device = "auto"`` to "cuda" or
    "cpu"; None detects it (``torch.cuda.is_available()``).
    """
    from pathlib import Path

    from easyhard.experiments.registry import RunContext, get_experiment, make_config
    from easyhard.runs.io import environment_info

    started, start = _now(), time.perf_counter()
    config_values = dict(task.config)
    device = config_values.get("device")
    try:
        _set_threads(task.threads)
        if device == "auto":
            if gpu is None:
                import torch

                gpu = torch.cuda.is_available()
            device = config_values["device"] = "cuda" if gpu else "cpu"
        experiment = get_experiment(task.experiment)
        config = make_config(experiment, config_values)
        ctx = RunContext(out_dir=None if task.work_dir is None else Path(task.work_dir),
                         checkpoint=None if task.checkpoint is None else Path(task.checkpoint))
        metrics = experiment.run(config, ctx)
        if not isinstance(metrics, dict):
            raise TypeError(f"run() must return a dict of metrics (got {type(metrics).__name__})")
        metrics_json = json.dumps(metrics, default=_json_default)
        state, error, trace = "done", None, None
    except Exception as err:  # a failing run is recorded, the sweep goes on
        metrics_json, state, error, trace = None, "failed", _one_line(err), traceback.format_exc()
    wall = time.perf_counter() - start
    try:
        environment = environment_info()
    except Exception as err:  # never lose a result over metadata
        environment = {"error": _one_line(err)}
    return RunResult(task.run_id, state, wall, started, _now(), metrics_json, error, trace,
                     device if isinstance(device, str) else None, socket.gethostname(), environment)


class Backend(Protocol):
    """Runs tasks and yields their results in batches, as they finish (in any order)."""

    name: str

    def run(self, tasks: Sequence[Task]) -> Iterator[list[RunResult]]: ...


def _check_workers(workers: int | None) -> int:
    """``workers`` (default: the CPU count) checked to lie in [1, MAX_WORKERS_PER_CPU x the CPU count]."""
    cpus = os.cpu_count() or 1
    if workers is None:
        return cpus
    workers = check_int_at_least("--workers", workers, 1)
    bound = MAX_WORKERS_PER_CPU * cpus
    if workers > bound:
        raise ConfigError(f"--workers must be <= {bound} ({MAX_WORKERS_PER_CPU} per CPU, {cpus} CPUs here) "
                          f"(got {workers})")
    return workers


def _set_pdeathsig() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    zero = ctypes.c_ulong(0)
    return prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), zero, zero, zero) == 0


def _watch_parent(parent: int, interval: float = PARENT_POLL_S) -> None:
    """Return never: exit this process (``os._exit(1)``) as soon as its parent is no longer ``parent``."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Initializer of local workers: the worker ends when ``parent`` (the process that started it) dies.

    Linux: the kernel sends SIGKILL when the parent dies (strictly: when the parent thread that started the
    worker ends; the backend starts workers from the thread that iterates :meth:`LocalBackend.run`); a parent
    that died before this ran is caught by comparing ``os.getppid()`` afterwards, and the worker exits at once.
    Elsewhere, or if ``prctl`` fails: a daemon thread exits the worker within ``PARENT_POLL_S`` seconds of
    the parent's death.
    """
    if _set_pdeathsig():
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="easyhard-parent-watch").start()


class LocalBackend:
    """Local worker processes (``spawn``): ``workers`` runs at a time, ``threads`` torch threads each."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int | None = 1):
        self.workers = _check_workers(workers)
        self.threads = threads

    def _pool(self, n_tasks: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=min(self.workers, n_tasks),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_die_with_parent, initargs=(os.getpid(),))

    def run(self, tasks: Sequence[Task]) -> Iterator[list[RunResult]]:
        """Keep ``workers`` runs in flight; yield the results that are ready each time one finishes.

        If a worker process dies (killed, out of memory), the pool breaks: the runs in flight are reported
        failed and the queued runs go on in a fresh pool.
        """
        if not tasks:
            return
        queue = deque(replace(task, threads=self.threads) for task in tasks)
        pool = self._pool(len(queue))
        in_flight: dict = {}
        finished = False
        try:
            while queue or in_flight:
                while queue and len(in_flight) < self.workers:
                    task = queue.popleft()
                    in_flight[pool.submit(execute, task)] = task
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                batch, broken = [], False
                for future in done:
                    task = in_flight.pop(future)
                    try:
                        batch.append(replace(future.result(), backend=self.name))
                    except BrokenProcessPool as err:
                        broken = True
                        batch.append(failed_result(task, f"worker process died: {_one_line(err)}", self.name))
                    except Exception as err:  # e.g. the task could not be sent to the worker
                        batch.append(failed_result(task, _one_line(err), self.name))
                if broken:  # the other runs in flight died with the pool
                    for future, task in in_flight.items():
                        future.cancel()
                        batch.append(failed_result(task, "worker process died: the process pool broke while this "
                                                         "run was in flight", self.name))
                    in_flight.clear()
                    pool.shutdown(wait=True, cancel_futures=True)
                    if queue:
                        pool = self._pool(len(queue))
                yield batch
            finished = True
        finally:
            # interrupted (Ctrl-C, or the consumer stopped): drop queued runs, do not wait for running ones
            pool.shutdown(wait=finished, cancel_futures=True)


def _check_connect_timeout(seconds: float) -> float:
    """``seconds`` as a float, checked to be a finite number > 0 (the CLI's --ray-timeout)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigError(f"--ray-timeout must be a finite number of seconds > 0 (got {seconds!r})")
    return check_positive("--ray-timeout", seconds)


def _host_port(address: str) -> tuple[str | None, int | None]:
    """Host and port of a Ray address ("HOST:PORT", "ray://HOST:PORT"); (host, None) without a port ("auto")."""
    rest = address.split("://", 1)[-1]
    try:
        parts = urlsplit("//" + rest)
        return parts.hostname, parts.port
    except ValueError:
        raise ConfigError(f"--address must be HOST:PORT, ray://HOST:PORT or auto (got {address!r})") from None


class _DropRecords(logging.Filter):
    """A logging filter that drops records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


class RayBackend:
    """One Ray task per run, on the cluster at ``address`` or on a local instance with ``workers`` CPUs."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, gpus_per_run: float | None = None,
                 threads: int | None = 1, connect_timeout: float = 30.0):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_EXTRA_MESSAGE) from None
        if address is not None and workers is not None:
            raise ConfigError("--workers sets the CPUs of a local Ray instance; with --address the cluster's "
                              "resources decide (drop --workers)")
        self.workers = None if address is not None else _check_workers(workers)
        if address is not None:
            _host_port(address)  # a malformed address fails here, before a sweep starts
        self.address = address
        self.gpus_per_run = None if gpus_per_run is None else check_nonnegative("--gpus-per-run", gpus_per_run)
        self.threads = threads
        self.connect_timeout = _check_connect_timeout(connect_timeout)
        if address is not None:
            self.probe()

    def _no_answer(self, reason: str) -> ConfigError:
        return ConfigError(f"--address {self.address}: no Ray cluster answered within {self.connect_timeout:g} s "
                           f"({reason}); check the address (the head node's HOST:PORT, or ray://HOST:PORT) "
                           "or allow more time with --ray-timeout")

    def probe(self) -> None:
        """A TCP connect to ``address`` within ``connect_timeout`` seconds, or ConfigError: done when the backend
        is made, so a dead address is refused before a sweep or a reproduction writes anything."""
        host, port = _host_port(self.address)
        if port is not None:
            try:
                socket.create_connection((host, port), timeout=self.connect_timeout).close()
            except OSError as err:
                raise self._no_answer(_one_line(err)) from None

    def _connect(self, ray: Any) -> None:
        """Join the cluster at ``address`` within ``connect_timeout`` seconds, or raise ConfigError.

        A TCP connect to the address comes first (a closed port or an unreachable host fails without Ray's
        retry warnings); ``ray.init`` then runs in a daemon thread for what is left of the time. If it has
        not returned by then, it is abandoned (it goes on retrying in the background until the process ends).
        """
        deadline = time.monotonic() + self.connect_timeout
        self.probe()
        outcome: list[BaseException | None] = []

        def init() -> None:
            try:
                ray.init(address=self.address, logging_level=logging.WARNING)
                outcome.append(None)
            except BaseException as err:  # handed to the waiting thread
                outcome.append(err)

        thread = threading.Thread(target=init, daemon=True, name="easyhard-ray-connect")
        quiet = _DropRecords("SIGTERM handler is not set")  # Ray's note on init outside the main thread
        logging.getLogger("ray._private.worker").addFilter(quiet)
        try:
            thread.start()
            thread.join(max(0.0, deadline - time.monotonic()))
        finally:
            logging.getLogger("ray._private.worker").removeFilter(quiet)
        if not outcome:
            raise self._no_answer("the port accepts connections, but Ray did not connect")
        if isinstance(outcome[0], ConnectionError):  # Ray gave up (e.g. the cluster refused this driver)
            raise ConfigError(f"--address {self.address}: {_one_line(outcome[0])}") from outcome[0]
        if outcome[0] is not None:
            raise outcome[0]

    def _gpus_per_task(self, tasks: Sequence[Task], cluster_gpus: float) -> float:
        wants_device = any("device" in task.config for task in tasks)
        gpus = self.gpus_per_run if self.gpus_per_run is not None else (1.0 if cluster_gpus and wants_device else 0.0)
        if gpus > cluster_gpus:
            raise ConfigError(f"--gpus-per-run must be <= the {cluster_gpus:g} GPUs of the Ray cluster (got {gpus:g})")
        return gpus

    def run(self, tasks: Sequence[Task]) -> Iterator[list[RunResult]]:
        """Start (or join) Ray, submit one task per run, yield the results ready each time one finishes."""
        try:
            import ray
        except ImportError:
            raise ConfigError(RAY_EXTRA_MESSAGE) from None
        if not tasks:
            return
        started_here = False
        if not ray.is_initialized():
            if self.address:
                self._connect(ray)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, logging_level=logging.WARNING)
            started_here = True
        refs: dict = {}
        pending: list = []
        try:
            gpus = self._gpus_per_task(tasks, float(ray.cluster_resources().get("GPU", 0)))
            remote = ray.remote(num_cpus=1, num_gpus=gpus)(execute)
            refs = {remote.remote(replace(task, threads=self.threads), gpus > 0): task for task in tasks}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                if pending:
                    more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                    ready += more
                batch = []
                for ref in ready:
                    try:
                        batch.append(replace(ray.get(ref), backend=self.name))
                    except Exception as err:  # the worker died or the task could not run
                        batch.append(failed_result(refs[ref], _one_line(err), self.name))
                yield batch
        finally:
            for ref in pending:  # interrupted: stop the runs that have not finished
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished meanwhile
                    pass
            if started_here:
                ray.shutdown()


def make_backend(name: str = "local", *, workers: int | None = None, address: str | None = None,
                 gpus_per_run: float | None = None, threads: int | None = 1, connect_timeout: float = 30.0) -> Backend:
    """The backend called ``name`` (``local`` or ``ray``); ConfigError for options it does not take.

    ``connect_timeout``: seconds within which the Ray cluster at ``address`` must answer (checked to be
    finite and > 0 for every backend; only ``ray`` with an ``address`` uses it).
    """
    from easyhard._validate import check_choice

    check_choice("--backend", name, BACKENDS)
    if threads is not None:
        threads = check_int_at_least("--threads", threads, 0) or None
    connect_timeout = _check_connect_timeout(connect_timeout)
    if name == "local":
        if address is not None:
            raise ConfigError("--address needs --backend ray")
        if gpus_per_run is not None:
            raise ConfigError("--gpus-per-run needs --backend ray")
        return LocalBackend(workers, threads)
    return RayBackend(workers, address, gpus_per_run, threads, connect_timeout)
