"""Stage runs forked from a process that has already imported torch (tests/fork_server.py), for the tests: a fresh
interpreter spends about 3 s importing torch (2-core AVX2 EPYC), most of a tiny stage's run.

Two uses. `run_module` and `run_code` stand in for `subprocess.run([sys.executable, "-m", ...])` (and `-c`), for
the many tests whose stage refuses an input, and the import guards. `forked_env()` is the environment under which
`python -m stages.<name>`, the command of every stage in dvc.yaml, is such a fork when DVC runs it: a `python`
first on PATH that hands `-m` of the stages, the tools and DVC to the server (anything else it runs as the real
interpreter). tests/pipeline_project.py's dvc_env() includes it, and its dvc() runs `python -m dvc` there, so the
tiny pipeline's build and the end-to-end tests run DVC and its stages so. A forked process's `sys.executable` is
that `python`: a tool the tests start as `python -m tools.<name>` (the concurrent run, the CPU sweep) puts it first
on PATH and starts DVC with it, as a real tool does its own interpreter, so its stages fork too. A tool started
as `sys.executable -m tools.<name>` is real and starts real ones (the Ray sweep, the determinism tool).

What the fork runs is what `python -m` runs: its folder, environment, `sys.argv` (`-m` while the `stages` package
is imported, as stages/__init__.py checks), `sys.path` (the folder, then PYTHONPATH), its standard streams, the
atexit handlers, and its exit code. The server has imported no module of the project (each run imports them afresh
from its own folder) and set torch's threads no way a stage does not set them itself. What differs: DVC's modules are
already loaded (a stage imports none of them, but dvclive, which the training imports, may), and the process's
parent is the server, not DVC's shell, so the tests of signals and of a stage outliving its parent start real
processes. tests/test_bad_input.py checks that forked runs read as `python -m` runs, and tests/test_pipeline.py
that a real robustness stage rewrites the build's report byte for byte.
"""
from __future__ import annotations

import atexit
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fork_server import FORK_SERVER, REAL_PYTHON, read_number, send_request

SERVER_SCRIPT = Path(__file__).with_name("fork_server.py")
# What the stages import from outside the project, loaded once (MPLBACKEND: as stages' matplotlib.use("Agg")),
# and what DVC's commands import: about 1 s less per `dvc` call (`dvc exp show --json` on the tiny project 2.6 -> 1.4 s,
# 2-core AVX2 EPYC).
PRELOADED = ("torch", "numpy", "yaml", "ruamel.yaml", "tqdm", "tabulate", "PIL.Image", "matplotlib.pyplot",
             "dvc.cli.parser", "dvc.repo.reproduce", "dvc.repo.experiments.run", "dvc.repo.experiments.executor.local",
             "dvc.repo.experiments.queue.celery", "dvc.repo.experiments.show", "dvc.repo.metrics.show",
             "dvc.repo.plots", "dvc.repo.status", "dvc.repo.checkout", "dvc.repo.commit", "dvc.repo.push",
             "dvc.repo.pull", "dvc.repo.experiments.push", "dvc.repo.experiments.pull", "dvc.repo.experiments.apply",
             "scmrepo.git", "pygit2", "networkx", "rich", "platformdirs", "pyparsing")

_server: tuple[subprocess.Popen, Path] | None = None   # this process's server and its folder (socket, `python`)


def _fork_server() -> Path:
    """This process's server (started at its first use, ended with it): the folder of its socket and `python`."""
    global _server
    if _server is None or _server[0].poll() is not None:
        folder = Path(tempfile.mkdtemp(prefix="fork-server-"))
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", FORK_SERVER)}
        # torch's OpenMP threads wait asleep, as stages/__init__.py sets before a stage imports torch
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        python = folder / "bin" / "python"
        server = subprocess.Popen([sys.executable, str(SERVER_SCRIPT), "--serve", str(folder / "socket"), str(python),
                                   *PRELOADED],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=folder,
                                  env={**env, "MPLBACKEND": "Agg"})
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the fork server did not start (exit code {server.wait()})")
        python.parent.mkdir()
        real, script = shlex.quote(sys.executable), shlex.quote(str(SERVER_SCRIPT))
        python.write_text(f"#!/bin/sh\nexec {real} -IS {script} \"$@\"\n")
        python.chmod(0o755)
        atexit.register(server.stdin.close)   # its end: the server sees its stdin close
        _server = server, folder
    return _server[1]


def forked_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with `python -m` of the stages, the tools and DVC forked from the server (the `python` first on PATH
    hands them over)."""
    folder = _fork_server()
    return {**env, "PATH": f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}", FORK_SERVER: str(folder / "socket"),
            REAL_PYTHON: sys.executable}


def run_module(cwd: Path, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout)`, forked from the server."""
    return _run(cwd, "-m", *args, env=env, timeout=timeout)


def run_code(cwd: Path, code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """The same for `python -c code`."""
    return _run(cwd, "-c", code, env=env, timeout=timeout)


def _run(cwd: Path, *args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    folder = _fork_server()
    command = [sys.executable, *args]
    with tempfile.TemporaryDirectory() as scratch, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        stdout, stderr = Path(scratch) / "stdout", Path(scratch) / "stderr"
        streams = [os.open(os.devnull, os.O_RDONLY), os.open(stdout, os.O_WRONLY | os.O_CREAT),
                   os.open(stderr, os.O_WRONLY | os.O_CREAT)]
        try:
            connection.connect(str(folder / "socket"))
            send_request(connection, {"cwd": str(cwd), "env": dict(env), "args": list(args)}, streams)
        finally:
            for fd in streams:
                os.close(fd)
        unread = bytearray()
        connection.settimeout(timeout)
        pid = code = None
        try:
            pid = read_number(connection, unread)
            code = read_number(connection, unread)
        except TimeoutError:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(command, timeout, stdout.read_text(), stderr.read_text()) from None
        if code is None:
            raise RuntimeError("the fork server ended during a run")
        return subprocess.CompletedProcess(command, code, stdout.read_text(), stderr.read_text())
