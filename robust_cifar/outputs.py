"""Writing stage outputs (JSON, CSV, figures) atomically: a file appears whole or not at all."""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from robust_cifar.errors import DiskFullError, InputError


def prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# Every output of dvc.yaml lies in one of these (tests/test_guards.py): a rerun deletes what it finds there
OUTPUT_FOLDERS = (Path("data"), Path("models"), Path("reports"))
# What DVC and Git keep of the project: no tool's report belongs there
CONTROL_FOLDERS = (Path(".dvc"), Path(".git"))

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# a folder made read-only or unwritable, or a folder or file standing where the output or its folder goes
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY)
NEARLY_FULL = 16 * 2**20   # bytes free below which a failed write is blamed on the disk


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def no_space(path: Path) -> DiskFullError:
    return DiskFullError(f"no space left on the disk holding {path.parent} while writing {path.name} "
                         f"({free_bytes(path.parent) / 2**20:.0f} MiB free; the partial file was removed): free some "
                         "space there, then rerun")


# The renames that written_together holds back: (partial, path) of each atomic_path inside it, innermost last
_HELD: list[list[tuple[Path, Path]]] = []


@contextlib.contextmanager
def written_together() -> Iterator[None]:
    """Every atomic_path written inside the block is renamed into place only when the whole block has finished: the
    outputs of a stage that belong together (summarize's text and its figures) are all new or all as they were. A
    full disk at the last figure left the new summary beside the old figures."""
    held: list[tuple[Path, Path]] = []
    _HELD.append(held)
    try:
        yield
    except BaseException:
        for partial, _ in held:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        raise
    finally:
        _HELD.remove(held)
    for partial, path in held:
        os.replace(partial, path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed to `path` only if the block finishes.

    An interrupted stage then never leaves a half-written output that looks finished, and a full
    disk is one line naming it, with the partial file removed.
    """
    try:
        path = prepare(path)
    except OSError as error:   # a file where its folder goes
        if error.errno in UNWRITABLE + (errno.EEXIST,):
            check_writable(path)
        raise
    partial = path.with_name(f".{path.name}.part{path.suffix}")
    held = False
    try:
        yield partial
        if _HELD:   # renamed with the others, when written_together's block ends
            _HELD[-1].append((partial, path))
            held = True
        else:
            os.replace(partial, path)
    except OSError as error:
        if error.errno in NO_SPACE:
            partial.unlink(missing_ok=True)
            raise no_space(path) from None
        if error.errno in UNWRITABLE:   # made so while the stage ran (its start checks the same: check_writable)
            check_writable(path)        # the one line that names it
        raise
    except RuntimeError:
        # torch.save's C++ writer reports a full disk as "basic_ios::clear: iostream error" or
        # "PytorchStreamWriter failed writing file": ask the disk
        if free_bytes(path.parent) < NEARLY_FULL:
            partial.unlink(missing_ok=True)
            raise no_space(path) from None
        raise
    finally:
        if not held:
            with contextlib.suppress(OSError):   # a read-only folder, where nothing was written to remove
                partial.unlink(missing_ok=True)


def check_free_space(path: str | Path, needed: int) -> None:
    """Refuse to start a long stage whose output (of about `needed` bytes) would not fit."""
    folder = prepare(path).parent
    free = free_bytes(folder)
    if free < needed:   # needed rounded up, free down, so the two never read as the same number
        raise DiskFullError(f"{path} needs about {math.ceil(needed / 2**20)} MiB but the disk holding {folder} has "
                            f"{math.floor(free / 2**20)} MiB free: free some space there, then rerun")


def move_folder(source: Path, destination: Path) -> None:
    """Put the folder `source` at `destination`, replacing what is there: a rename where both are on one
    filesystem; otherwise a copy beside `destination` renamed into place (a cache on a scratch disk), so
    `destination` is never left half-written."""
    prepare(destination)
    shutil.rmtree(destination, ignore_errors=True)
    try:
        source.replace(destination)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    copy = destination.with_name(f".{destination.name}.part")
    shutil.rmtree(copy, ignore_errors=True)
    try:
        shutil.copytree(source, copy)
    except OSError as error:
        shutil.rmtree(copy, ignore_errors=True)
        if error.errno in NO_SPACE:
            raise no_space(copy) from None
        raise
    copy.replace(destination)
    shutil.rmtree(source, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict], columns: list[str] | None = None) -> None:
    rows = list(rows)
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as partial, partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def save_figure(figure, path: str | Path, dpi: int = 110) -> None:
    with atomic_path(path) as partial:
        figure.savefig(partial, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")


def check_report_file(path: str | Path, option: str, suffix: str, example: str,
                      earlier: Callable[[Path], bool]) -> None:
    """A tool's report file (`option`, e.g. `--out`, of `suffix`, e.g. .md), checked before the tool's work: not
    a folder, not in DVC's output folders or in .dvc/.git, not a file of the project's top level (params.yaml,
    dvc.yaml, README.md ...) nor an existing file that is not an `earlier` report of the tool (a published
    run's summary.md or metrics.json has the suffix too); then writable."""
    path = Path(path)
    target, project = path.resolve(), Path.cwd().resolve()
    fix = f"name a new {suffix} file, e.g. {example}"
    if path.is_dir():   # `--out ''` too: Path('') is the current folder
        raise InputError(f"{option} {path}: is a folder; {fix}")
    inside = next((folder for folder in OUTPUT_FOLDERS + CONTROL_FOLDERS if target.is_relative_to(project / folder)),
                  None)
    if inside is not None:
        where = "DVC writes the pipeline's outputs" if inside in OUTPUT_FOLDERS else "DVC or Git keeps its records"
        raise InputError(f"{option} {path}: lies in {inside}/, where {where} (a rerun may delete or mix it); {fix}")
    if path.exists() and target.parent == project:
        raise InputError(f"{option} {path}: is a file of the project's top level, which the report would overwrite; {fix}")
    if path.exists() and not (path.suffix == suffix and path.is_file() and earlier(path)):
        raise InputError(f"{option} {path}: exists and is no earlier {suffix} report of this tool, which the report "
                         f"would overwrite; {fix}")
    check_writable(path, files=True)


def linked_output(path: Path) -> InputError:
    """The one line for an output folder that is a symbolic link (models/ on a bigger disk)."""
    return InputError(f"{path} is a link (to {os.readlink(path)}): DVC refuses an output outside the project, after "
                      "the stage's work; make it a folder again (for the disk space, `dvc cache dir <folder on the "
                      "other disk>` moves DVC's cache, which holds the data)")


def check_writable(*paths: str | Path, files: bool = False) -> None:
    """Refuse to start (before hours of work) when an output's folder cannot be created or written. A path with
    a suffix is a file (its folder is checked), one without a folder, unless `files` (a tool's --out)."""
    for path in map(Path, paths):
        is_file = files or bool(path.suffix)
        folder = path.parent if is_file else path
        # a stage's output (a path in the project) in a linked folder: DVC refuses it only after the work. A linked
        # file is DVC's own where its cache type is `symlink`.
        linked = [] if path.is_absolute() else [above for above in [folder, *folder.parents] if above.is_symlink()]
        if linked:
            raise linked_output(linked[-1])
        if is_file and path.is_dir():   # the write at the end would fail, after the work
            raise InputError(f"{path} is a folder where this stage writes a file: remove it (`rm -r {path}`), "
                             "then rerun")
        existing = next((above for above in [folder, *folder.parents] if above.exists()), Path("."))
        if not existing.is_dir():
            raise InputError(f"cannot write {path}: {existing} is a file, not a folder; name another place")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise InputError(f"cannot write {path} ({error.strerror}): make {folder} writable, then rerun") from None
