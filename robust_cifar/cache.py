"""The project's one cache folder: what a run leaves that is not a DVC output and changes no result.

Each stage's last wall time (the summary's provenance), the live training logs, downloaded archives,
umap-learn's compiled numba functions and concurrent_repro's logs, one subfolder each, in `.cache/` of
the working directory (the project root, where DVC runs stages), or in the folder that
$ROBUST_CIFAR_CACHE names (one cache for several clones, or a scratch disk). There, what belongs to one
project's runs (`project_cache_dir`: live logs, timings, concurrent_repro's logs) goes into a subfolder
of that project's own, so clones that share the cache never write into each other's runs; downloads and
compiled code are shared. The project's locks (`hold`: one training of a run, one concurrent_repro at a
time) are always in its own `.cache/locks/`. A leaf module but for the errors.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

from robust_cifar.errors import UserError

ENV = "ROBUST_CIFAR_CACHE"
LOCAL = Path(".cache")   # the cache folder without $ROBUST_CIFAR_CACHE; the project's locks, always


def _named() -> bool:
    return bool(os.environ.get(ENV))


def _where(root: Path) -> str:
    """The cache folder as a message names it: the variable that set it, or its path."""
    return f"${ENV} = {root}" if _named() else str(root.resolve())


def _root() -> Path:
    root = Path(os.environ.get(ENV) or LOCAL)
    if root.exists() and not root.is_dir():
        raise UserError(f"the cache folder {_where(root)} is a file, not a folder: move the file away"
                        + (f", or point ${ENV} at a folder" if _named() else ""))
    return root


def cache_dir(name: str) -> Path:
    """The cache's subfolder `name`, shared by every project that uses the cache (not created); a UserError where
    a file is in its place."""
    folder = _root() / name
    if folder.exists() and not folder.is_dir():
        raise UserError(f"the cache's folder {folder} is a file: move the file away (the cache holds nothing DVC "
                        "records)")
    return folder


def project_key(root: Path | None = None) -> str:
    """The project (its root: the working directory) as a folder name: its name and a digest of its path."""
    root = (root or Path.cwd()).resolve()
    return f"{root.name}-{hashlib.blake2b(str(root).encode(), digest_size=4).hexdigest()}"


def project_cache_dir(name: str) -> Path:
    """The cache's subfolder `name` for this project's runs alone: `.cache/<name>`, or under $ROBUST_CIFAR_CACHE
    `<name>/<project_key>` (two clones training the same run at once would otherwise share a live log)."""
    return cache_dir(name) / project_key() if _named() else cache_dir(name)


def ensure_cache() -> None:
    """The cache folder exists or can be made: a UserError (one line) when it is a file or cannot be created,
    before a stage's work rather than in the middle of it. Folders made to find out are removed again (only
    while still empty: another stage may be filling one)."""
    root = _root()
    made: list[Path] = []
    try:
        for folder in reversed([root, *root.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        if not made:   # there already: writable? (a read-only one failed the training stage, in a traceback)
            probe = root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as error:
        raise UserError(f"the cache folder {_where(root)} cannot be {'written' if root.is_dir() else 'made'} "
                        f"({error.strerror}): "
                        + (f"point ${ENV} at a folder you can write" if _named() else
                           f"make {root.parent if root == LOCAL and not root.is_dir() else root} writable")) from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def hold(name: str, busy: str):
    """An exclusive lock named `name` for this process, released when the returned handle is closed or the process
    ends, however it ends; a UserError saying `busy` while another process holds it. The lock file lies in the
    project's own `.cache/locks/`, whatever $ROBUST_CIFAR_CACHE says: two shells of one project, one with the
    variable set, must find the same lock."""
    lock = LOCAL / "locks" / f"{name}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = lock.open("a")
    except OSError as error:
        fix = f"remove the folder (`rm -r {lock}`)" if lock.is_dir() else f"make {lock.parent} a folder you can write"
        raise UserError(f"cannot open the lock file {lock} ({error.strerror}): {fix}, then rerun") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"{busy} (it holds {lock}): let it finish or stop it, then rerun") from None
    return handle
