"""Putting params.yaml back when a tool's run fails or is stopped: `dvc exp run -S` (the preset) and `-S` of
concurrent_repro leave their edit behind, where `git status` may not show it (same size, same second), and the
project's core.autostage has DVC stage it in Git's index, where `git checkout params.yaml` would bring it back."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from robust_cifar.cache import hold
from robust_cifar.errors import UserError


@dataclass
class Outcome:
    returncode: int = 1


WORKSPACE_LOCK = "workspace"   # .cache/locks/workspace.lock: held by the tool that edits params.yaml and runs DVC here


def hold_workspace():
    """One tool at a time that edits this project's params.yaml and runs the pipeline on it (the preset,
    concurrent_repro): a second one's edit reached the first's stages, which recorded its values, and each put
    params.yaml back over the other's. A UserError (one line) while another holds it."""
    return hold(WORKSPACE_LOCK, "another preset or concurrent_repro is running in this project, and each edits "
                "params.yaml, which the other's stages read")


def index_entry(path: Path) -> str | None:
    """`path`'s entry in Git's index (`<mode> <blob> <stage>`), or None: untracked, or no Git work tree here."""
    try:
        found = subprocess.run(["git", "ls-files", "--stage", "--", path.name], cwd=path.parent, capture_output=True,
                               text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (found.stdout.split("\t")[0] or None) if found.returncode == 0 else None


def put_back_entry(path: Path, entry: str | None) -> None:
    """Set `path`'s index entry to `entry` (None: not in the index)."""
    git = ["git", "update-index"]
    command = ([*git, "--force-remove", "--", path.name] if entry is None else
               [*git, "--cacheinfo", ",".join([*entry.split()[:2], path.name])])
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(command, cwd=path.parent, capture_output=True, timeout=60)


def check_editable(path: Path) -> None:
    """The run sets its -S values in `path`: refused in one line where it cannot be written, before anything runs
    (DVC said 'unexpected error' after the preset's checks; concurrent_repro's -S was a traceback)."""
    try:
        with open(path, "r+b"):   # opened for writing, nothing written: its bytes and times stay
            pass
    except OSError as error:
        fix = ("run from a writable copy of the project" if error.errno == errno.EROFS else
               f"make it writable (for example `chmod u+w {path}`) and rerun")
        raise UserError(f"cannot write {path} ({error.strerror}): the run writes its overrides there; {fix}") from None


@contextlib.contextmanager
def restored_on_failure(path: Path, lock: Path | None = None) -> Iterator[Outcome]:
    """Put `path` back byte for byte, with its times, and its entry in Git's index, unless the block sets
    `outcome.returncode = 0`; and `lock` (dvc.lock, which the run's stages rewrote; absent before: removed), saying
    that `dvc checkout` then puts back the outputs DVC removed (a failed preset left every stage stale)."""
    watched = [(file, file.read_bytes() if file.is_file() else None, file.stat() if file.is_file() else None,
                index_entry(file)) for file in ([path] + ([lock] if lock else []))]
    outcome = Outcome()
    try:
        yield outcome
    finally:
        if outcome.returncode != 0:
            for file, before, times, entry in watched:
                restored = []
                now = file.read_bytes() if file.is_file() else None
                if now != before:
                    if before is None:
                        file.unlink()
                    else:
                        file.write_bytes(before)
                        os.utime(file, ns=(times.st_atime_ns, times.st_mtime_ns))
                    restored.append("the work tree")
                if index_entry(file) != entry:
                    put_back_entry(file, entry)
                    restored.append("Git's index")
                if restored:
                    outputs = "; `dvc checkout` puts back the outputs the run removed" if file == lock else ""
                    print(f"{file} is as it was before the run (in {' and '.join(restored)}){outputs}",
                          file=sys.stderr)
