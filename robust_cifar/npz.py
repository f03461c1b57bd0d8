"""Reproducible .npz files: the same arrays always give the same bytes (and so the same DVC hash)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from robust_cifar.errors import InputError, absent, get_back
from robust_cifar.outputs import atomic_path


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz at exactly `path` that np.load reads, byte-identical for identical arrays.

    np.savez stamps members with the current time, which would change the DVC hash of an
    unchanged output on every rerun and so rerun everything downstream. The file is written
    under another name and renamed, so a half-written file never looks finished.
    """
    with atomic_path(path) as partial, zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(arrays[key], order="C"), allow_pickle=False)


def load_npz(path: str | Path, produced_by: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path`; a missing, truncated or foreign file is a one-line InputError
    that names the stage to rerun. Nothing is unpickled (allow_pickle=False)."""
    path = Path(path)
    redo = get_back(path, produced_by)
    if not path.is_file():
        raise absent(path, produced_by)
    if not zipfile.is_zipfile(path):   # np.load would read a .npy as one bare array, and text as an error
        raise InputError(f"{path} is not a readable .npz (not a zip archive: a .npy, a text file or a truncated "
                         f"copy?): {redo}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise InputError(f"{path} is not a readable .npz ({type(error).__name__}: truncated or corrupt?): {redo}") from None
    foreign = next((key for key, value in arrays.items() if not isinstance(value, np.ndarray)), None)
    if foreign is not None:   # np.load hands a member that is no .npy over as its bytes
        raise InputError(f"{path} is not a readable .npz (its member {foreign} is no array): {redo}")
    return arrays
