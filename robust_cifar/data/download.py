"""Getting the CIFAR-10 archive: the `data.*` params, a verified download, md5s.

The official archive is streamed to a temporary file and renamed into place only once its md5 is
verified; a local archive (`data.archive`) is known to DVC only by its md5 param, so that param is
required. Reading the archive is `robust_cifar.data.archive`'s job.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from robust_cifar.errors import ArchiveError, ParamsError
from robust_cifar.outputs import NO_SPACE, no_space
from robust_cifar.params import MD5, TEXT, Params

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"

_CHUNK_BYTES = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60
SET_ARCHIVE_HINT = (
    "point `data.archive` at a local copy of the CIFAR-10 archive, e.g. "
    "`dvc exp run -S data.archive=path/to/cifar-10-python.tar.gz dvc.yaml` "
    "and set `data.archive_md5` to its md5 (`md5sum` prints it)"
)


@dataclass(frozen=True)
class DataConfig:
    url: str
    md5: str
    archive: str        # a local archive to read instead of downloading `url` ("" = download)
    archive_md5: str

    @classmethod
    def from_params(cls, params: Params) -> "DataConfig":
        config = cls(url=params.value("data.url", TEXT), md5=params.value("data.md5", MD5).lower(),
                     archive=params.value("data.archive", TEXT), archive_md5=params.value("data.archive_md5", MD5).lower())
        if not config.archive and not config.url.startswith(("https://", "http://")):
            raise ParamsError(f"{params.source}: `data.url` = {config.url!r} is not an http(s) address and `data.archive` "
                              f"is empty: set one of them; {params.fix_hint('data.archive')}")
        return config


# eq=False: generated __eq__/__hash__ would compare numpy arrays, which has no


def _new_md5():
    # usedforsecurity=False keeps md5 usable on FIPS-mode Pythons; it is an
    # integrity check against a published value, not a security primitive.
    return hashlib.md5(usedforsecurity=False)


def md5_of(path) -> str:
    digest = _new_md5()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalised_md5(expected_md5: str | None) -> str:
    return (expected_md5 or "").strip().lower()


def verify_md5(path, expected_md5: str | None) -> None:
    """Raise ArchiveError unless ``path`` has ``expected_md5`` ("" or None skips)."""
    expected = _normalised_md5(expected_md5)
    if not expected:
        return
    actual = md5_of(path)
    if actual != expected:
        raise ArchiveError(
            f"md5 of {path} is {actual}, but {expected} was expected: the file is "
            "truncated, corrupt, or a different archive. Re-download it, or if this "
            f"is the archive you meant to use, set `data.archive_md5` to {actual}."
        )


def download(url: str, destination: Path, expected_md5: str) -> Path:
    """Stream ``url`` to ``destination``, verifying its md5 before it appears there.

    The data goes to a temporary file next to ``destination`` and is renamed
    into place only once complete and verified, so an interrupted or corrupt
    download never looks like a finished one.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    expected = _normalised_md5(expected_md5)
    partial = destination.with_name(f".{destination.name}.part")
    try:
        try:
            with open(partial, "wb") as sink:
                actual = _stream_to(url, sink, description=destination.name)
        except OSError as error:
            if error.errno in NO_SPACE:
                raise no_space(destination) from None   # the partial file is removed below
            raise
        if expected and actual != expected:
            raise ArchiveError(
                f"the file downloaded from {url} has md5 {actual}, but {expected} "
                "was expected: the download was corrupted or the server sent a "
                f"different file. Try again, or {SET_ARCHIVE_HINT}."
            )
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def _stream_to(url: str, sink, description: str) -> str:
    """Copy ``url`` into ``sink`` with a progress bar; return the md5 of what was copied."""
    digest = _new_md5()
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = _content_length(response)
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description
            ) as progress:
                for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                    sink.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
        # URLError covers HTTPError; TimeoutError is socket.timeout on 3.10+.
        raise ArchiveError(
            f"downloading {url} failed ({error}). If this machine cannot reach it, "
            f"{SET_ARCHIVE_HINT}."
        ) from error
    return digest.hexdigest()


def _content_length(response) -> int | None:
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def require_md5(path: Path, expected_md5: str | None) -> None:
    """A local archive's md5 param is set: the file is no DVC dependency, so the md5 is what DVC records of it
    (another file under the same name went unseen)."""
    if not _normalised_md5(expected_md5):
        raise ArchiveError(f"`data.archive` = {path} has no `data.archive_md5`: DVC knows a local archive only by "
                           "that param, so another file under this name would go unseen; set this one's: "
                           f"`dvc exp run -S data.archive_md5={md5_of(path) if Path(path).is_file() else '<its md5>'} "
                           "dvc.yaml`")
