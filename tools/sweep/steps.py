"""What a sweep worker does, as git and dvc commands with their output appended to one log per experiment.

Standard library only: a Ray worker runs `run_remote` after receiving it by value (see on_ray.py),
so nothing here may import the project or a third-party package.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    where: str                   # "gpu 0", "cpu 1", a Ray node's address
    log: str                     # the log file's path
    failed_step: str = ""        # the command that failed, when not ok
    log_text: str = field(default="", repr=False)


class StepFailed(Exception):
    def __init__(self, command: list[str], returncode: int):
        super().__init__(f"`{shlex.join(command)}` exited with {returncode}")
        self.command, self.returncode = command, returncode


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every git / dvc call: this Python's bin first, so the stages' `python` is ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


class SweepStopped(Exception):
    """The sweep is stopping: no further command starts."""


class Commands:
    """The commands a sweep runs, each in a process group of its own, listed while they run: a stopped sweep
    signals exactly these (stop). Signalling the sweep's own group, as it once did, also killed whatever had
    started the sweep (a job script) when that shared the group."""

    def __init__(self):
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def __reduce__(self):   # Ray ships this module by value: a worker gets a registry of its own, empty
        return (Commands, ())

    def start(self, command: list[str], **popen) -> subprocess.Popen:
        with self.lock:
            if self.stopping.is_set():
                raise SweepStopped(shlex.join(command))
            process = subprocess.Popen(command, process_group=0, **popen)
            self.running.add(process)
            return process

    def wait(self, process: subprocess.Popen) -> int:
        try:
            return process.wait()
        except KeyboardInterrupt:   # Ray cancels a task by interrupting its main thread: stop the command too
            self.stop(signal.SIGINT)
            process.wait()
            raise
        finally:
            with self.lock:
                self.running.discard(process)

    def stop(self, signum: int) -> None:
        """From now on no command starts; the process group of each running one gets `signum`."""
        with self.lock:
            self.stopping.set()
            running = list(self.running)
        for process in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)


COMMANDS = Commands()


def run_logged(command: list[str], cwd: Path | str, log: Path, env: dict[str, str]) -> None:
    """Run one command, appending `$ command` and its output to `log`; StepFailed when it fails."""
    with open(log, "a") as out:
        out.write(f"$ {shlex.join(command)}   (in {cwd})\n")
        out.flush()
        start = time.monotonic()
        process = COMMANDS.start(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        returncode = COMMANDS.wait(process)
        out.write(f"[{f'exit {returncode}' if returncode else 'done'} after {time.monotonic() - start:.1f} s]\n")
    if returncode:
        raise StepFailed(command, returncode)


def clone(source: str, commit: str, destination: Path, log: Path, env: dict[str, str]) -> None:
    """A clone of `source` at `commit` (detached): what the sweep runs on, never the user's workspace."""
    run_logged(["git", "clone", "-q", "--no-checkout", source, str(destination)], destination.parent, log, env)
    run_logged(["git", "checkout", "-q", "--detach", commit], destination, log, env)


def use_cache(workspace: Path, cache_dir: str, log: Path, env: dict[str, str]) -> None:
    """Point the clone at a shared DVC cache (its git-ignored .dvc/config.local), by a path relative to the clone:
    DVC writes its config in ASCII, and refused the absolute path of a project in a folder named `proj ü`."""
    run_logged(dvc("cache", "dir", "--local", os.path.relpath(cache_dir, workspace)), workspace, log, env)


def reset(workspace: Path, log: Path, env: dict[str, str]) -> None:
    """params.yaml and dvc.lock back to the commit. The outputs the last experiment changed stay: the
    next `dvc exp run` sees they differ from dvc.lock and checks the committed ones out of the
    shared cache ("Stage ... is cached - skipping run") where its experiment does not change them."""
    run_logged(["git", "reset", "-q", "--hard"], workspace, log, env)
    run_logged(["git", "clean", "-q", "-fd"], workspace, log, env)


def run_experiment(workspace: Path, name: str, set_params: list[str], log: Path, env: dict[str, str],
                   pull: bool = False) -> None:
    # dvc.yaml as the target, so that DVC deletes no recorded output before check_params runs (see preset.command)
    run_logged(dvc("exp", "run", *(["--pull"] if pull else []), "-n", name, *set_params, "dvc.yaml"), workspace, log, env)


def push_experiment(workspace: Path, git_remote: str, name: str, log: Path, env: dict[str, str],
                    force: bool = False, cache: bool = True, dvc_remote: str = "") -> None:
    """`dvc exp push`: the experiment's git ref to `git_remote`, its outputs (unless cache=False) to the DVC remote."""
    options = (["--force"] if force else []) + ([] if cache else ["--no-cache"]) + (
        ["--remote", dvc_remote] if dvc_remote else [])
    run_logged(dvc("exp", "push", *options, git_remote, name), workspace, log, env)


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def with_numerics(numerics: tuple[str, ...], set_params: list[str]) -> list[str]:
    """`-S` arguments that put a worker's device and CPU threads (`key=value`; they change a result's bits, so DVC
    records them) into an experiment's params, but for a key its own `set_params` sets; then those."""
    own = {setting.partition("=")[0] for setting in set_params[1::2]}
    return [arg for setting in numerics if setting.partition("=")[0] not in own for arg in ("-S", setting)] + set_params


def run_remote(spec: dict) -> dict:
    """One experiment on a Ray node: clone from the Git remote, run, `dvc exp push` to the shared remotes.

    `spec`: name, set_params, git_url, commit, workdir (node-local scratch; `<workdir>/cache` is the
    node's DVC cache, shared by its tasks), dvc_remote ("" = the repo's default), force, threads (the
    experiment's compute.threads: its own -S, else params.yaml's), gpus.
    Returns an Outcome as a dict, with the whole log in log_text.
    """
    start = time.monotonic()
    workdir = Path(os.path.expanduser(spec["workdir"]))
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    (workdir / "cache").mkdir(parents=True, exist_ok=True)
    workspace = workdir / "runs" / f"{spec['name']}-{uuid.uuid4().hex[:8]}"
    log = workspace.with_name(workspace.name + ".log")
    extra = {"OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    if not spec["gpus"]:
        extra["CUDA_VISIBLE_DEVICES"] = ""     # a CPU task must not use a GPU Ray did not give it
    env = command_env(extra)
    node = _node_address()
    failed = ""
    try:
        with open(log, "a") as out:
            out.write(f"# {spec['name']} on {node}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}"
                      f" ({'cpu only' if not spec['gpus'] else 'gpu'})\n")
        clone(spec["git_url"], spec["commit"], workspace, log, env)
        use_cache(workspace, str(workdir / "cache"), log, env)
        if spec["dvc_remote"]:
            run_logged(dvc("remote", "default", "--local", spec["dvc_remote"]), workspace, log, env)
        # --pull: the outputs of stages this experiment does not change come from the DVC remote
        # the device and the thread count are params (they change a result's bits)
        numerics = (f"compute.device={'cuda' if spec['gpus'] else 'cpu'}", f"compute.threads={spec['threads']}")
        run_experiment(workspace, spec["name"], with_numerics(numerics, spec["set_params"]), log, env, pull=True)
        push_experiment(workspace, spec["git_url"], spec["name"], log, env, force=spec["force"],
                        dvc_remote=spec["dvc_remote"])
    except StepFailed as error:
        failed = str(error)
    except Exception as error:  # noqa: BLE001 - a worker's own trouble (disk full, ...) is the experiment's failure
        failed = f"{type(error).__name__}: {error}"
        with open(log, "a") as out:
            out.write(f"{failed}\n")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    text = read_text(log)
    log.unlink(missing_ok=True)
    return Outcome(spec["name"], not failed, time.monotonic() - start, node, "", failed, text).__dict__


def _node_address() -> str:
    try:
        import ray  # only on a Ray worker, where it is installed
        return f"{ray.util.get_node_ip_address()} (node {ray.get_runtime_context().get_node_id()[:8]})"
    except Exception:  # noqa: BLE001
        import socket
        return socket.gethostname()
