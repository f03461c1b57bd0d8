"""Writing stage outputs (JSON, CSV) and running stage entry points with user-facing errors."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Callable, Iterable

from robust_cifar.compute import DeviceError
from robust_cifar.data import ArchiveError
from robust_cifar.params import ParamsError

# Errors that are the user's to fix: shown as one clear line, not a traceback.
USER_ERRORS = (ParamsError, ArchiveError, DeviceError, FileNotFoundError)


def run_stage(main: Callable[[list[str]], None]) -> None:
    try:
        main(sys.argv[1:])
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, data) -> None:
    prepare(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict], columns: list[str] | None = None) -> None:
    rows = list(rows)
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    with prepare(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
