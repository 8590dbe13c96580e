"""Process hygiene: local sweep workers end when the sweep's process dies, even by SIGKILL.

The SIGKILL tests start a parent process, wait until its workers are up (they write their pids to files), kill
the parent with SIGKILL and check that no worker outlives it by more than 10 s.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from easyhard.runs import backends

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SLEEPER = '''
import os
import time
from dataclasses import dataclass
from pathlib import Path
from easyhard.experiments.registry import Experiment

@dataclass(frozen=True)
class Config:
    pid_dir: str = ""
    index: int = 0

def run(config, ctx=None):
    (Path(config.pid_dir) / str(os.getpid())).write_text("")
    time.sleep(120)  # far longer than the test: only the parent's death can end this worker in time
    return {}

EXP = Experiment("sleeper", Config, run)
'''

SWEEP_PARENT = '''
import sys
from easyhard.runs.backends import LocalBackend, Task

if __name__ == "__main__":  # the spawned workers import this file too
    target, pid_dir = sys.argv[1:3]
    tasks = [Task(f"r{i}", target, {"pid_dir": pid_dir, "index": i}) for i in range(2)]
    for _ in LocalBackend(workers=2).run(tasks):
        pass
'''

# backends.py loaded alone (``python FILE BACKENDS_PY ...``): its own imports are light, while importing the
# easyhard.runs package would import torch (seconds on a loaded machine)
LOAD_BACKENDS = '''
import importlib.util
import sys
spec = importlib.util.spec_from_file_location("backends_alone", sys.argv[1])
backends = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backends)
'''

# the portable fallback alone (no prctl): the worker watches its parent with the watchdog thread
WATCHDOG_WORKER = LOAD_BACKENDS + '''
import os
import threading
import time
from pathlib import Path

threading.Thread(target=backends._watch_parent, args=(os.getppid(), 0.1), daemon=True).start()
(Path(sys.argv[2]) / str(os.getpid())).write_text("")
time.sleep(120)
'''

WATCHDOG_PARENT = '''
import subprocess
import sys

subprocess.Popen([sys.executable, *sys.argv[1:]]).wait()
'''

# the worker initializer given a parent that is not the actual one (as if the parent died in between)
ORPHAN_AT_START = LOAD_BACKENDS + '''
import time

backends._die_with_parent(-1)
time.sleep(60)
print("survived")
'''


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _kill_parent_and_watch(args: list[str], pid_dir: Path, n_workers: int) -> list[int]:
    """Start the parent, wait for ``n_workers`` pid files, SIGKILL it; the workers still running 10 s later."""
    log = pid_dir.parent / "stderr.txt"
    with log.open("wb") as stderr:
        parent = subprocess.Popen([sys.executable, *args], stderr=stderr, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < n_workers:
            assert parent.poll() is None, f"the parent exited early: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the workers did not start within 60 s"
            time.sleep(0.1)
            workers = [int(name) for name in os.listdir(pid_dir)]
        assert all(_alive(pid) for pid in workers)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    return survivors


def _files(tmp_path: Path, **texts: str) -> dict[str, str]:
    for name, text in texts.items():
        (tmp_path / f"{name}.py").write_text(text)
    (tmp_path / "pids").mkdir()
    return {name: str(tmp_path / f"{name}.py") for name in texts}


def test_local_workers_die_with_a_killed_sweep(tmp_path):
    files = _files(tmp_path, sleeper=SLEEPER, parent=SWEEP_PARENT)
    args = [files["parent"], f"{files['sleeper']}:EXP", str(tmp_path / "pids")]
    assert _kill_parent_and_watch(args, tmp_path / "pids", 2) == []


def test_the_portable_watchdog_ends_an_orphaned_worker(tmp_path):
    files = _files(tmp_path, worker=WATCHDOG_WORKER, parent=WATCHDOG_PARENT)
    args = [files["parent"], files["worker"], backends.__file__, str(tmp_path / "pids")]
    assert _kill_parent_and_watch(args, tmp_path / "pids", 1) == []


def test_a_worker_whose_parent_is_already_gone_exits_at_once(tmp_path):
    files = _files(tmp_path, worker=ORPHAN_AT_START)
    done = subprocess.run([sys.executable, files["worker"], backends.__file__], capture_output=True, text=True,
                          timeout=20)  # it would sleep 60 s
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "")
