"""A stage never outlives the process that started it, and stops on INT, TERM and HUP alike."""
import signal
import subprocess
import sys
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


SWEEP = """
import io, subprocess, sys, threading
from pathlib import Path
from robust_cifar.signals import Stopped, signal_of, stop_on_signals
from tools.sweep import grid
from tools.sweep.local import Progress, plan_slots, run_pool
stop_on_signals()
saying = threading.Lock()   # two workers print at once: one whole line each, never interleaved

def job(experiment, index, log):   # an experiment that takes a minute, in the sweep's process group
    child = subprocess.Popen(["sleep", "60"])
    with saying:
        print(experiment.name, child.pid, flush=True)
    child.wait()

try:
    run_pool(grid.experiments(["knn.k=1,2,3,4"]), plan_slots([], 2, cpu_count=2, environ={}), job, Path(sys.argv[1]),
             Progress(4, io.StringIO()))
except KeyboardInterrupt as stopped:
    sys.exit(Stopped(signal_of(stopped)).exit_code)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_sweep_stops_its_running_experiments_and_starts_no_more(tmp_path, signum):
    # a session of its own: the sweep passes the signal on to its whole process group
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    started = [sweep.stdout.readline().split() for _ in range(2)]   # two workers, one experiment each
    sweep.send_signal(signum)   # to the sweep alone, as a scheduler or a closed terminal does
    assert sweep.wait(timeout=30) == 128 + signum
    assert all(wait_until_gone(int(pid), 10) for _, pid in started)
    assert sweep.stdout.read() == ""   # the other two experiments never started
