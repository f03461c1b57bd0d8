"""A stage never outlives the process that started it, and stops on INT, TERM and HUP alike."""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robust_cifar.signals import SHELLS, Stopped, parent_of, process_name, stop_group
from tests.methods import ANGULAR
from tests.pipeline_project import ROOT, dvc_env

# Work a stop signal interrupts at once, in the stand-ins below: short sleeps, not one long one. CPython runs a
# Python signal handler between bytecodes; a signal that lands after the last check before `time.sleep` enters its
# system call waits for the whole sleep, and the tests send theirs the moment the child says it started (once in
# this suite: a tool sat out its 60 s sleep after SIGHUP). A real tool or stage returns to Python far more often.
def working(seconds: int) -> str:
    return f"[time.sleep(0.05) for _ in range({20 * seconds})]"


# A stand-in stage: run_stage around a long sleep, its pid on stdout.
STAGE = ("import os, time; from robust_cifar.stage import run_stage; "
         f"run_stage(lambda argv: (print(os.getpid(), flush=True), {working(120)}))")


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def poll(condition, seconds: float, interval: float = 0.005):
    """`condition()` once it is true, or its last (false) value after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value


def wait_until_gone(pid: int, seconds: float = 15.0) -> bool:
    return poll(lambda: not alive(pid), seconds, interval=0.1)


# A stand-in for DVC, which asks for no signal when its parent dies: its pid on stdout, then a long sleep.
SLEEPER = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)"]
# A tool's way to start its DVC: the preset's (run_in_group), and concurrent_repro's (run, one stage)
TOOLS = {
    "preset": f"from robust_cifar.signals import run_in_group; run_in_group({SLEEPER!r})",
    "concurrent_repro": "from tools.concurrent_repro import Plan, run; "
                        f"run(Plan({{'s': frozenset()}}, {{'s': 0}}), 1, command=lambda stage: {SLEEPER!r})",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_a_tool_killed_with_sigkill_leaves_no_dvc_running(tmp_path, tool):
    """SIGKILL cannot be passed on: concurrent_repro's `dvc repro --single-item` ran on, and its stage recorded."""
    started = subprocess.Popen([sys.executable, "-c", TOOLS[tool]], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    dvc_pid = None
    try:
        if tool == "concurrent_repro":   # the stage's output goes to its log; its pid is the tool's only child's,
            # once it runs the stand-in (a tool killed between the fork and the request: the next test)
            assert poll(lambda: children(started.pid) and "time.sleep" in cmdline(children(started.pid)[0]), 10)
            dvc_pid = children(started.pid)[0]
        else:
            dvc_pid = int(started.stdout.readline())
        assert alive(dvc_pid)
        started.kill()
        started.wait()
        assert wait_until_gone(dvc_pid, seconds=10), f"{tool}'s DVC outlived it"
    finally:
        if dvc_pid and alive(dvc_pid):
            os.kill(dvc_pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_whose_tool_died_before_its_request_ends_there(tmp_path):
    """Between the fork and the parent-death request the tool may already be gone: the request comes too late."""
    marker = tmp_path / "ran-on"
    script = ("import os, time\n"
              "from robust_cifar.signals import dies_with_this_process\n"
              "request = dies_with_this_process()\n"
              "if os.fork() == 0:\n"
              "    time.sleep(0.5)\n"   # the tool leaves at once, before its child's request
              "    request()\n"
              f"    open({str(marker)!r}, 'w').close()\n"
              "    os._exit(0)\n"
              "os._exit(0)\n")
    result = subprocess.run([sys.executable, "-c", script], timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0
    time.sleep(2)   # the orphan's half second, and its request
    assert not marker.exists(), "the child ran on after its tool had died"


@pytest.mark.parametrize("experiment", [True, False])
def test_a_stage_interrupted_under_a_workspace_experiment_says_how_to_go_on_or_put_params_yaml_back(tmp_path, experiment):
    """Ctrl-C of a workspace `dvc exp run -S` left its values in params.yaml, and the stage's advice, `dvc repro`,
    would have run them as the workspace's own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DVC_EXP_NAME", None)
    if experiment:
        env.update(DVC_EXP_NAME="exp-1", DVC_ROOT=str(tmp_path))
    stage = subprocess.Popen([sys.executable, "-c", STAGE], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    os.kill(int(stage.stdout.readline()), signal.SIGINT)
    (line,) = stage.communicate(timeout=30)[1].strip().splitlines()
    assert stage.returncode == 130
    assert line.startswith("interrupted (SIGINT): no output of this stage was written; rerun ")
    assert ("rerun the same `dvc exp run` to go on" in line and "git show HEAD:params.yaml > params.yaml" in line) \
        == experiment
    assert ("rerun it with `dvc repro`" in line) != experiment


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stage_under_a_shell_that_forks_exits_when_the_process_that_started_the_shell_is_killed():
    """DVC runs `$SHELL -c "<command>"`, /bin/sh without SHELL; dash forks there (here the `; exit` makes any shell
    fork), and the stage's parent-death signal waited on the shell, which outlived a killed DVC: the stage trained
    on and wrote a model no dvc.lock records."""
    command = f"{sys.executable} -c {shlex.quote(STAGE)}; exit $?"
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.Popen(['/bin/sh', '-c', "
                               "sys.argv[1]]).wait()", command], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stage_pid = int(parent.stdout.readline())
    shell_pid = parent_of(stage_pid)
    assert alive(stage_pid) and process_name(shell_pid) in SHELLS and parent_of(shell_pid) == parent.pid
    parent.kill()   # SIGKILL: DVC passes nothing on, and the shell lives on
    parent.wait()
    assert wait_until_gone(stage_pid, seconds=10), "the stage outlived the process that started its shell"
    assert wait_until_gone(shell_pid), "the shell outlived its stage"


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
def test_a_stopped_tool_passes_sigint_on_to_a_stage_whatever_stopped_it(signum):
    """DVC handles SIGINT alone: a TERM or HUP passed on killed it at once, and its locks stayed behind."""
    stage = subprocess.Popen([sys.executable, "-c", STAGE], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, process_group=0)
    stage.stdout.readline()
    stop_group(stage, signum)
    assert stage.returncode == 128 + signal.SIGINT
    assert stage.stderr.read().strip() == ("interrupted (SIGINT): no output of this stage was written; rerun it with "
                                           "`dvc repro`")


def test_a_stopped_tool_waits_for_its_whole_process_group_not_only_the_leader():
    """DVC exited at once and the tool said its line and exited while the stage under it still unwound."""
    unwinding = ("import os, signal, sys, time; signal.signal(signal.SIGINT, lambda *a: (time.sleep(1.5), sys.exit(0)));"
                 f" print(os.getpid(), flush=True); {working(120)}")
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', sys.argv[1]]); time.sleep(120)", unwinding],
                              stdout=subprocess.PIPE, text=True, process_group=0)
    stage_pid = int(leader.stdout.readline())
    stop_group(leader, signal.SIGINT)   # the leader dies of it at once; the stage takes 1.5 s to finish
    assert leader.returncode is not None and not alive(stage_pid)


def test_a_stage_stopped_once_its_outputs_are_written_finishes():
    """It once said no output was written (or died of the signal at shutdown), and DVC discarded a finished stage."""
    stage = subprocess.Popen([sys.executable, "-c", "import time; import robust_cifar.stage as stage; "
                              "stage.record_time = lambda name, seconds: (print('written', flush=True), time.sleep(1)); "
                              "stage.run_stage(lambda argv: None)"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert stage.stdout.readline() == "written\n"
    stage.send_signal(signal.SIGINT)
    _, stderr = stage.communicate(timeout=30)
    assert stage.returncode == 0 and stderr == ""


def test_stopped_is_a_keyboard_interrupt_with_the_shells_exit_code():
    assert isinstance(Stopped(signal.SIGTERM), KeyboardInterrupt)
    assert (Stopped(signal.SIGTERM).exit_code, Stopped(signal.SIGHUP).exit_code, Stopped().exit_code) == (143, 129, 130)


SWEEP = """
import io, os, sys
from pathlib import Path
from robust_cifar.signals import Stopped, signal_of, stop_on_signals
from tools.sweep import grid, steps
from tools.sweep.local import Progress, plan_slots, run_pool
stop_on_signals()
print(os.getpid(), flush=True)
folder = Path(sys.argv[1])

def job(experiment, index, log):   # an experiment that takes a minute, run as the sweep runs its commands
    pid_file = folder / f"{experiment.name}.pid"
    steps.run_logged(["sh", "-c", f"echo $$ > {pid_file}.part && mv {pid_file}.part {pid_file} && exec sleep 60"],
                     folder, log, dict(os.environ))

try:
    run_pool(grid.experiments(["knn.k=1,2,3,4"]), plan_slots([], 2, threads=1), job, folder,
             Progress(4, sys.stdout))
except KeyboardInterrupt as stopped:
    sys.exit(Stopped(signal_of(stopped)).exit_code)
"""


def running_experiments(folder: Path, count: int = 2, seconds: float = 30.0) -> list[int]:
    """The pids of the first `count` experiments' commands, once each has written its pid file."""
    poll(lambda: len(list(folder.glob("*.pid"))) >= count, seconds, interval=0.05)
    return [int(path.read_text()) for path in sorted(folder.glob("*.pid"))]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_sweep_stops_its_running_experiments_and_starts_no_more(tmp_path, signum):
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert int(sweep.stdout.readline()) == sweep.pid
    started = running_experiments(tmp_path)   # two workers, one experiment each
    assert len(started) == 2
    sweep.send_signal(signum)   # to the sweep alone, as a scheduler or a closed terminal does
    assert sweep.wait(timeout=30) == 128 + signum
    assert all(wait_until_gone(pid, 10) for pid in started)
    assert sweep.stdout.read() == ""   # no experiment reported as failed; the other two never started
    assert len(list(tmp_path.glob("*.pid"))) == 2


def test_a_sweep_stopped_alone_stops_its_commands_but_not_the_script_that_started_it(tmp_path):
    """The sweep once signalled its whole process group, which held the job script that started it too."""
    script = subprocess.Popen(["sh", "-c", '"$0" -c "$1" "$2"; echo the script goes on', sys.executable, SWEEP,
                               str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    sweep_pid = int(script.stdout.readline())
    started = running_experiments(tmp_path)
    assert len(started) == 2
    os.kill(sweep_pid, signal.SIGTERM)
    output, _ = script.communicate(timeout=30)
    assert script.returncode == 0 and output.strip() == "the script goes on"
    assert all(wait_until_gone(pid, 10) for pid in started)


def loads_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stage_whose_parent_dies_while_it_still_imports_torch_exits_at_once_with_one_line():
    """Before stages/__init__.py asked for the parent-death signal, a DVC killed in the stage's first seconds
    left it running to train and write a model no dvc.lock records."""
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys; child = subprocess.Popen([sys.executable, '-m', 'stages.train', "
                               "'baseline', '0']); print(child.pid, flush=True); child.wait()"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stage_pid = int(parent.stdout.readline())
    assert poll(lambda: loads_torch(stage_pid), 30), "the stage never started importing torch"
    parent.kill()
    parent.wait()
    assert wait_until_gone(stage_pid), "the stage outlived its parent"
    assert parent.stderr.read().strip() == ("interrupted (SIGTERM) while the stage was starting: it wrote nothing; "
                                            "rerun the same command to go on")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_tool_stopped_while_it_works_is_one_line_with_the_signals_exit_code(signum):
    tool = subprocess.Popen([sys.executable, "-c", "import time; from robust_cifar.signals import run_tool; "
                             f"run_tool(lambda: (print('working', flush=True), {working(60)}))"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tool.stdout.readline() == "working\n"
    tool.send_signal(signum)
    _, stderr = tool.communicate(timeout=30)
    assert tool.returncode == 128 + signum
    assert stderr.strip() == f"interrupted ({signal.Signals(signum).name})"


def block_hup():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})   # a mask is inherited (Ray blocks SIGINT everywhere)


def test_a_tool_started_with_the_stop_signals_blocked_still_stops_on_them():
    """A blocked signal waited for ever: the tool (or stage) ran on as if it had never come."""
    tool = subprocess.Popen([sys.executable, "-c", "import time; from robust_cifar.signals import run_tool; "
                             f"run_tool(lambda: (print('working', flush=True), {working(60)}))"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=block_hup)
    assert tool.stdout.readline() == "working\n"
    tool.send_signal(signal.SIGHUP)
    _, stderr = tool.communicate(timeout=30)
    assert tool.returncode == 128 + signal.SIGHUP and stderr.strip() == "interrupted (SIGHUP)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("tool", ["tools.preset", "tools.determinism"])
def test_ctrl_c_while_a_tool_still_imports_torch_is_one_line(tool):
    """Python's KeyboardInterrupt, raised inside torch's import, was a traceback (once C++'s terminate: SIGABRT)."""
    process = subprocess.Popen([sys.executable, "-m", tool, "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert poll(lambda: loads_torch(process.pid), 30), "the tool never started importing torch"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGINT
    assert stderr.strip() == "interrupted (SIGINT) while the tool was starting: it had done nothing yet"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stopped_determinism_check_stops_its_training_and_removes_its_scratch_folder(reproduced_project, tmp_path):
    check = subprocess.Popen([sys.executable, "-m", "tools.determinism", ANGULAR, "-S", "train.epochs=100"],
                             cwd=reproduced_project, env={**dvc_env(), "TMPDIR": str(tmp_path)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    training = poll(lambda: children(check.pid), 60, interval=0.1)
    assert training and list(tmp_path.iterdir()), "no training started in its scratch folder"
    check.send_signal(signal.SIGTERM)   # to the tool alone, as a scheduler does
    _, stderr = check.communicate(timeout=60)
    assert check.returncode == 128 + signal.SIGTERM
    assert stderr.strip() == "interrupted (SIGTERM): no file of the project was written"
    assert all(wait_until_gone(pid, 10) for pid in training)
    assert list(tmp_path.iterdir()) == []


def test_a_tools_user_error_is_its_one_line_and_exit_2(capsys):
    """crosscheck, bench and ablate raised ParamsError and DeviceError as tracebacks (and exit 1, which
    crosscheck also uses for a check that disagrees)."""
    from robust_cifar.errors import ParamsError
    from robust_cifar.signals import run_tool

    def refused():
        raise ParamsError("params.yaml: `knn.k` = 0 is invalid")
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_tool(refused)
    finally:   # run_tool took over the stop signals: give this process its own back
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: params.yaml: `knn.k` = 0 is invalid\n"
