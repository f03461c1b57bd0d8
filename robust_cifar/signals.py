"""Stopping cleanly on INT, TERM and HUP, and never outliving the process that started us.

A stage that outlives DVC (killed by a scheduler, a closed terminal) would keep the CPU or a GPU
for hours and write outputs no dvc.lock records. So a stage asks the kernel for SIGTERM when its
parent dies, and treats TERM and HUP as it treats Ctrl-C: the exception unwinds, partial files are
removed, one line is printed, and the exit code is 128 + the signal's number. A tool that starts
stages or DVC (preset, concurrent_repro, sweep) runs each in a process group of its own, passes SIGINT
on to those groups (FORWARDED: what DVC handles), waits for them, and exits as the signal it got says.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NoReturn

from robust_cifar.errors import USER_ERROR_EXIT, UserError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STAGE_STARTING = "while the stage was starting: it wrote nothing; rerun the same command to go on"
PR_SET_PDEATHSIG = 1


class Stopped(KeyboardInterrupt):
    """INT, TERM or HUP arrived: unwind as Ctrl-C does, then exit with `exit_code`."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def signal_of(interrupt: KeyboardInterrupt) -> int:
    return interrupt.signum if isinstance(interrupt, Stopped) else signal.SIGINT


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def unblock_stop_signals() -> None:
    """Let INT, TERM and HUP in where the parent left them blocked (a mask is inherited: Ray blocks SIGINT in every
    process it starts), so that they arrive instead of waiting for ever."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def stop_on_signals() -> None:
    """INT, TERM and HUP raise Stopped in the main thread, even where the parent left them ignored
    (`dvc exp run` starts its stages with INT and HUP ignored, so Ctrl-C could not stop them) or blocked."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)
    unblock_stop_signals()


@contextlib.contextmanager
def signals_held():
    """INT, TERM and HUP that arrive during the block are held, then raised again when it ends (one, the first):
    for a few renames that must happen together or not at all. Handlers, not a signal mask: a mask holds a
    signal for the main thread alone, and another thread of the process would take it."""
    arrived = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])


def die_with_parent() -> None:
    """SIGTERM when the parent process dies (Linux; elsewhere nothing changes), or, where the parent is a shell,
    when the process that started the shell does.

    DVC runs a stage as `$SHELL -c "<command>"` (/bin/sh where SHELL is unset: a container, cron, many CI
    runners). bash runs a lone command in its own process, so the stage is DVC's child; dash (Debian's and
    Ubuntu's /bin/sh) forks, and a killed DVC leaves that shell waiting on the stage, which then trained on and
    wrote a model no dvc.lock records. So past a shell, a thread watches the shell's parent."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    term_when_parent_dies()
    starter = parent_of(parent) if process_name(parent) in SHELLS else None
    if os.getppid() != parent:   # it died before the request was in place
        raise Stopped(signal.SIGTERM)
    if starter and starter > 1 and not _watching:
        _watching.append(parent)
        threading.Thread(target=_watch, args=(parent, starter), name="die-with-starter", daemon=True).start()


def _libc_prctl():
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


# found once, here: as a child's preexec_fn it runs between fork and exec, where loading a library could deadlock
_PRCTL = _libc_prctl() if sys.platform.startswith("linux") else None


def term_when_parent_dies() -> None:
    """Ask the kernel for SIGTERM when this process's parent dies (Linux; elsewhere nothing)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def dies_with_this_process() -> Callable[[], None]:
    """What a tool gives its DVC as `preexec_fn`: a tool killed with SIGKILL, which it cannot pass on, leaves no DVC
    running (and the DVC's stage then stops with it). A tool that died between the fork and the request: the child
    ends there."""
    parent = os.getpid()

    def request() -> None:
        term_when_parent_dies()
        if _PRCTL is not None and os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)
    return request


SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "ash", "busybox"})
WATCH_SECONDS = 0.5
_watching: list[int] = []   # the shell watched, once a thread watches it


def stat_fields(stat: Path) -> list[str]:
    """A /proc/<pid>/stat's fields after the command's name (which may hold spaces and parentheses): state, parent,
    process group, ..."""
    return stat.read_text().rpartition(")")[2].split()


def parent_of(pid: int) -> int | None:
    """The parent of process `pid`, or None where it is gone (or there is no /proc)."""
    try:
        return int(stat_fields(Path(f"/proc/{pid}/stat"))[1])
    except (OSError, ValueError, IndexError):
        return None


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _watch(shell: int, starter: int) -> None:
    """SIGTERM to this process once `shell` no longer has `starter` as its parent (the kernel hands an orphan to
    init or a subreaper); a shell that is gone is the parent-death signal's to report."""
    while (now := parent_of(shell)) == starter:
        time.sleep(WATCH_SECONDS)
    if now is not None:
        os.kill(os.getpid(), signal.SIGTERM)


def leave_at_once(signum: int, while_doing: str) -> NoReturn:
    print(f"interrupted ({signal.Signals(signum).name}) {while_doing}", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def leave_at_once_on_signals(while_doing: str) -> None:
    """INT, TERM and HUP end this process at once, with one line (`interrupted (SIGINT) <while_doing>`) and
    exit 128 + the signal: no exception to unwind through an import that cannot take one (torch's, in C++)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: leave_at_once(signum, while_doing))
    unblock_stop_signals()


def guard_start() -> None:
    """The first thing a stage process does (stages/__init__.py), before its imports take seconds: INT, TERM
    and HUP end it at once with one line, and the kernel sends TERM if its parent dies from now on. Asked
    for only after the imports (in run_stage), a DVC killed while torch loaded left the stage running, and
    it wrote a model no dvc.lock records. run_stage then puts in the handlers that unwind."""
    leave_at_once_on_signals(STAGE_STARTING)
    try:
        die_with_parent()
    except Stopped as stopped:
        leave_at_once(stopped.signum, STAGE_STARTING)


def run_tool(main: Callable[[], int | None], stopped_line: str = "") -> NoReturn:
    """How a tool ends its `python -m tools.<name>` (tools/__init__.py left at once on INT, TERM and HUP while it
    imported): from here on they raise Stopped, and one that its main does not handle is one line
    (`interrupted (SIGTERM)`, then `: <stopped_line>` if given), exit 128 + the signal, after the unwinding
    removed what the tool had under way. A UserError its main does not handle is its one line, exit 2."""
    stop_on_signals()
    try:
        code = main()
    except UserError as error:   # what the user can fix: its one line, never a traceback
        print(f"error: {error}", file=sys.stderr)
        code = USER_ERROR_EXIT
    except KeyboardInterrupt as stopped:
        interrupt = Stopped(signal_of(stopped))
        print(f"interrupted ({interrupt.name})" + (f": {stopped_line}" if stopped_line else ""), file=sys.stderr)
        code = interrupt.exit_code
    sys.exit(code)


# What a tool passes on to the process groups it started, whatever signal stopped the tool: DVC handles SIGINT alone
# (it lets its stage stop, then releases its locks; TERM or HUP killed it at once and left .dvc/tmp/rwlock entries
# the next `dvc repro` warned about), and a stage takes INT, TERM and HUP alike.
FORWARDED = signal.SIGINT


def group_running(pgid: int) -> bool:
    """Whether a process of the group `pgid` still runs (zombies waiting to be reaped do not count); on a
    system without /proc, whether the group can be signalled at all."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            state, _, group = stat_fields(stat)[:3]
            if int(group) == pgid and state not in "ZX":
                return True
    return False


def wait_for_group(process: subprocess.Popen, seconds: float) -> bool:
    """Wait up to `seconds` for the process group led by `process` to end (the leader reaped, and every other
    member gone: a stage still unwinding after DVC exited); whether it did."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None and not group_running(process.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_group(process: subprocess.Popen, signum: int, grace_seconds: float = 20.0, sent: bool = False) -> None:
    """Stop the process group led by `process` (started with process_group=0), which `signum` stopped the tool
    for: FORWARDED to the group unless it was `sent` already, a wait for the whole group, then TERM and KILL to
    what is left. The tool's own line and exit code (128 + `signum`) come after its stages' lines."""
    for number, (escalation, wait) in enumerate(((FORWARDED, grace_seconds), (signal.SIGTERM, 5.0),
                                                 (signal.SIGKILL, 5.0))):
        if number or not sent:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, escalation)
        try:
            if wait_for_group(process, wait):
                return
        except KeyboardInterrupt:   # a second Ctrl-C: stop waiting politely
            continue


def run_in_group(command: list[str], **popen) -> int:
    """Run `command` in a process group of its own and return its exit code; Stopped while waiting
    stops that group (stop_group) and waits for it (the preset's `dvc exp run`)."""
    process = subprocess.Popen(command, process_group=0, preexec_fn=dies_with_this_process(), **popen)
    try:
        return process.wait()
    except KeyboardInterrupt as stopped:
        stop_group(process, signal_of(stopped))
        raise


def ignore_stop_signals() -> None:
    """From now on INT, TERM and HUP change nothing here (while this process stops on the first one)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
