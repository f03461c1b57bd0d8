"""A stage never outlives the process that started it, and stops on INT, TERM and HUP alike."""
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from robust_cifar.signals import Stopped, stop_group
from tests.pipeline_project import ROOT

# A stand-in stage: run_stage around a long sleep, its pid on stdout.
STAGE = ("import os, time; from robust_cifar.stage import run_stage; "
         "run_stage(lambda argv: (print(os.getpid(), flush=True), time.sleep(120)))")


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def wait_until_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stage_exits_when_the_process_that_started_it_is_killed():
    # a parent (standing in for DVC) that starts the stage, says its pid, and waits
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', sys.argv[1]]);"
                               " child.wait()", STAGE], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stage_pid = int(parent.stdout.readline())
    assert alive(stage_pid)
    parent.kill()   # SIGKILL: the parent can pass nothing on
    parent.wait()
    assert wait_until_gone(stage_pid), "the stage outlived its parent"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stopping_a_process_group_stops_a_stage_with_the_signals_exit_code(signum):
    stage = subprocess.Popen([sys.executable, "-c", STAGE], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, process_group=0)
    stage.stdout.readline()
    stop_group(stage, signum)
    assert stage.returncode == 128 + signum
    assert stage.stderr.read().strip() == (f"interrupted ({signal.Signals(signum).name}): no output of this stage "
                                           "was written; rerun it with `dvc repro`")


def test_stopped_is_a_keyboard_interrupt_with_the_shells_exit_code():
    assert isinstance(Stopped(signal.SIGTERM), KeyboardInterrupt)
    assert (Stopped(signal.SIGTERM).exit_code, Stopped(signal.SIGHUP).exit_code, Stopped().exit_code) == (143, 129, 130)


def test_stop_all_stops_commands_running_in_other_threads_and_starts_no_new_one(monkeypatch):
    from robust_cifar import signals
    monkeypatch.setattr(signals, "_stopping", threading.Event())
    codes = []
    worker = threading.Thread(target=lambda: codes.append(signals.run_in_group(["sleep", "30"])))
    worker.start()
    deadline = time.monotonic() + 10
    while not signals._running and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    signals.stop_all(signal.SIGTERM)
    worker.join(10)
    assert codes == [-signal.SIGTERM] and time.monotonic() - started < 5
    with pytest.raises(Stopped):
        signals.run_in_group(["true"])
