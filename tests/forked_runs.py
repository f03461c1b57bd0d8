"""`python -m <module> ...` (or `python -c <code>`) run as a fork of a process that has already imported torch and the other libraries the
stages import (about 0.2 s instead of about 3 s of imports on a 2-core AVX2 EPYC), for the many tests whose stage
refuses an input before any work: each is otherwise a fresh interpreter importing torch to say one line.

The fork runs the module as `python -m` would: its working folder, environment, `sys.argv` (`-m` while the
`stages` package is imported, as stages/__init__.py checks), `sys.path` (the folder, then PYTHONPATH), stdin from
/dev/null, stdout and stderr to files, the atexit handlers, and the exit code of SystemExit or 1 after a traceback.
The process it forks from has imported no module of the project (the run imports them from its own folder, a copy
of the project or not) and started no thread of its own. Runs whose numbers matter, and signal tests, start real
processes; tests/test_bad_input.py checks that a refusal run here reads as one run by `python -m`.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# What the stages import from outside the project, loaded once (MPLBACKEND: as stages' matplotlib.use("Agg")).
PRELOADED = ("torch", "numpy", "yaml", "ruamel.yaml", "tqdm", "tabulate", "PIL.Image", "matplotlib.pyplot")

FORK_SERVER = r"""
import atexit, importlib, json, os, runpy, sys, traceback
for name in sys.argv[1:]:
    importlib.import_module(name)
project = [name for name in sys.modules if name.split(".")[0] in ("robust_cifar", "stages", "tools", "tests")]
assert not project, f"the fork server imported the project's {project}"


def run(request):
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                            (2, request["stderr"], os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    option, target, *arguments = request["args"]
    extra = [entry for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:] = ["" if option == "-c" else os.getcwd(), *extra, *sys.path[1:]]   # as `python -c` / `-m` begin
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    sys.argv = [option, *arguments]   # what `python -m` holds while it imports the module's package
    try:
        if option == "-c":
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stopped:
        code = stopped.code if isinstance(stopped.code, int) else 0 if stopped.code is None else 1
        if not isinstance(stopped.code, (int, type(None))):
            print(stopped.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            run(json.loads(line))
        finally:   # run ends with os._exit: only what failed before the module ran gets here
            traceback.print_exc()
            os._exit(1)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""

_server: subprocess.Popen | None = None
_unread = b""   # what the server said past the last whole line read


def _fork_server() -> subprocess.Popen:
    global _server, _unread
    if _server is None or _server.poll() is not None:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        _server = subprocess.Popen([sys.executable, "-c", FORK_SERVER, *PRELOADED], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, cwd=tempfile.gettempdir(), env={**env, "MPLBACKEND": "Agg"})
        _unread = b""
        atexit.register(_server.stdin.close)
    return _server


def _said(server: subprocess.Popen, timeout: float | None = None) -> int | None:
    """The server's next line, a number (a pid or an exit code); None if none came within `timeout` seconds."""
    global _unread
    while b"\n" not in _unread:
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            return None
        chunk = os.read(server.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"the fork server ended (exit code {server.wait()})")
        _unread += chunk
    line, _, _unread = _unread.partition(b"\n")
    return int(line)


def run_module(cwd: Path, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout)`, forked from the preloaded process."""
    return _run(cwd, "-m", *args, env=env, timeout=timeout)


def run_code(cwd: Path, code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """The same for `python -c code`."""
    return _run(cwd, "-c", code, env=env, timeout=timeout)


def _run(cwd: Path, *args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    server = _fork_server()
    command = [sys.executable, *args]
    with tempfile.TemporaryDirectory() as scratch:
        stdout, stderr = Path(scratch) / "stdout", Path(scratch) / "stderr"
        stdout.touch()
        stderr.touch()
        request = {"cwd": str(cwd), "env": dict(env), "args": list(args), "stdout": str(stdout), "stderr": str(stderr)}
        server.stdin.write(json.dumps(request).encode() + b"\n")
        server.stdin.flush()
        pid = _said(server)
        code = _said(server, timeout)
        if code is None:
            os.kill(pid, signal.SIGKILL)
            _said(server)
            raise subprocess.TimeoutExpired(command, timeout, stdout.read_text(), stderr.read_text())
        return subprocess.CompletedProcess(command, code, stdout.read_text(), stderr.read_text())
