"""A process that has imported torch and the other libraries the stages import, and runs `python -m <module> ...`
(or `python -c <code>`) as a fork of itself: about 0.2 s where a fresh interpreter spends about 3 s importing
(2-core AVX2 EPYC). Only the tests use it (tests/forked_runs.py starts it and says what it is trusted with).

    python tests/fork_server.py --serve SOCKET PYTHON [MODULE ...]   the server: imports the MODULEs, then serves
    python -IS tests/fork_server.py ARGS ...                         a client that stands in for `python ARGS ...`

The client sends its working folder, environment, arguments and standard streams (their file descriptors) over
the server's UNIX socket; the server forks a child that runs the module as `python -m` would (its `sys.argv`,
`sys.path`, atexit handlers and exit code; its `sys.executable` is PYTHON, the `python` that starts clients, so
that what a forked tool starts with `sys.executable` or puts first on PATH forks too), hears the child's end and
says its exit code, which the client exits with. INT, TERM and HUP sent to the client are passed on to the child.
A client started for anything but `-m` of a FORKED module, or without FORK_SERVER in its environment, becomes the
real interpreter (`exec`).
"""
import atexit
import importlib
import json
import os
import runpy
import select
import shutil
import signal
import socket
import struct
import sys
import traceback

FORK_SERVER = "ROBUST_CIFAR_TESTS_FORK_SERVER"   # the socket, in the environment of the processes that may use it
REAL_PYTHON = "ROBUST_CIFAR_TESTS_PYTHON"        # the interpreter a client stands in for
HEADER = struct.Struct("!I")   # a request's length, before its JSON
FORKED = ("stages", "tools", "dvc")   # the packages whose `python -m` a client hands to the server


def send_request(connection: socket.socket, request: dict, fds: list[int]) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(connection, [HEADER.pack(len(body)) + body], fds)


def receive_request(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
        more = connection.recv(1 << 16)
        if not more:
            raise ConnectionError("the client left before its request was whole")
        data += more
    return json.loads(data[HEADER.size:HEADER.size + HEADER.unpack_from(data)[0]]), fds


def read_number(connection: socket.socket, unread: bytearray) -> int | None:
    """The next line the server sends on `connection`, a number (a pid, then an exit code); None at its end."""
    while b"\n" not in unread:
        chunk = connection.recv(64)
        if not chunk:
            return None
        unread += chunk
    line, _, rest = bytes(unread).partition(b"\n")
    unread[:] = rest
    return int(line)


def run_child(request: dict, fds: list[int], python: str) -> None:
    """In the forked child: become `python <args>` in the request's folder and environment, and exit as it would."""
    for fd, standard in zip(fds, (0, 1, 2)):
        os.dup2(fd, standard)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    option, target, *arguments = request["args"]
    extra = [entry for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:] = ["" if option == "-c" else os.getcwd(), *extra, *sys.path[1:]]   # as `python -c` / `-m` begin
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    sys.argv = [option, *arguments]   # what `python -m` holds while it imports the module's package
    sys.executable = python
    try:
        if option == "-c":
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stopped:   # as Python's own exit reads it: None is 0, a message is printed and 1
        code = 0 if stopped.code is None else stopped.code
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(path: str, python: str, preload: list[str]) -> None:
    for name in preload:
        importlib.import_module(name)
    project = [name for name in sys.modules if name.split(".")[0] in ("robust_cifar", "stages", "tools", "tests")]
    assert not project, f"the fork server imported the project's {project}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}   # a running child's pid -> its client
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [], 0.05)
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            break   # the process that started the server has ended
        if listener in ready:
            connection, _ = listener.accept()
            try:
                request, fds = receive_request(connection)
            except (ConnectionError, OSError, ValueError):
                connection.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                try:
                    run_child(request, fds, python)
                finally:   # run_child ends with os._exit: only what failed before the module ran gets here
                    traceback.print_exc()
                    os._exit(1)
            for fd in fds:
                os.close(fd)
            with_client(connection, f"{pid}\n")
            waiting[pid] = connection
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = waiting.pop(pid, None)
            if connection:
                with_client(connection, f"{os.waitstatus_to_exitcode(status)}\n")
                connection.close()
    for pid in waiting:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(os.path.dirname(path))   # the socket and the `python` that uses it


def with_client(connection: socket.socket, line: str) -> None:
    try:
        connection.sendall(line.encode())
    except OSError:   # the client is gone (killed): its child still ends and is reaped
        pass


def client(args: list[str]) -> None:
    server = os.environ.get(FORK_SERVER)
    if not (server and len(args) >= 2 and args[0] == "-m" and args[1].split(".")[0] in FORKED):
        real = os.environ.get(REAL_PYTHON, sys.executable)
        os.execv(real, [real, *args])
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(server)
    send_request(connection, {"cwd": os.getcwd(), "env": dict(os.environ), "args": args}, [0, 1, 2])
    unread = bytearray()
    pid = read_number(connection, unread)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: os.kill(pid, signum))
    code = read_number(connection, unread)
    sys.exit(1 if code is None else code if code >= 0 else 128 - code)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        client(sys.argv[1:])
