"""Small synthetic CIFAR-10 archives for tests: valid ones in both layouts, and hostile ones.

Everything here is deterministic and takes milliseconds, so tests can build
fresh archives in ``tmp_path`` instead of sharing fixtures on disk.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import struct
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
OFFICIAL_FOLDER = "cifar-10-batches-py"

# An extra member for a builder: (header, payload); payload is None for links etc.
Member = tuple[tarfile.TarInfo, "bytes | None"]


def make_images(n_per_class: int, n_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled uint8 (N, 3, 32, 32) images whose class shows in their mean colour.

    Class colours are spread evenly around the colour wheel so that even a tiny
    model separates them; the noise keeps the task from being trivial.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(n_classes), n_per_class)).astype(np.int64)
    angles = 2 * np.pi * np.arange(n_classes) / n_classes
    phases = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    colours = 128 + 80 * np.cos(angles[:, None] - phases[None, :])  # (classes, 3)
    noise = rng.normal(0, 20, size=(len(labels), 3, 32, 32))
    images = colours[labels][:, :, None, None] + noise
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


def file_member(name: str, payload: bytes) -> Member:
    header = tarfile.TarInfo(name)
    header.size = len(payload)
    return header, payload


def special_member(name: str, kind: bytes, linkname: str = "") -> Member:
    """A non-file member (tarfile.SYMTYPE, LNKTYPE, FIFOTYPE, ...)."""
    header = tarfile.TarInfo(name)
    header.type = kind
    header.linkname = linkname
    return header, None


def write_official_archive(
    path,
    train_per_class: int = 5,
    test_per_class: int = 2,
    seed: int = 0,
    extra_members: Iterable[Member] | None = None,
    python2_pickles: bool = True,
) -> Path:
    """A tar.gz in the official cifar-10-python layout.

    With ``python2_pickles`` the batches are byte-for-byte the kind of pickle
    the official archive holds (protocol 2, Python 2 strings, numpy.core
    names); without, they are what Python 3 and numpy 2 write by default
    (protocol 4, str keys), which readers should accept too.
    """
    members = _official_members(train_per_class, test_per_class, seed, python2_pickles)
    return _write_tar(path, [*(file_member(name, data) for name, data in members.items()), *(extra_members or ())])


def official_images(train_per_class: int = 5, test_per_class: int = 2, seed: int = 0):
    """The (train_images, train_labels, test_images, test_labels) write_official_archive stores."""
    train_images, train_labels = make_images(train_per_class, seed=seed)
    test_images, test_labels = make_images(test_per_class, seed=seed + 1)
    return train_images, train_labels, test_images, test_labels


def _official_members(train_per_class, test_per_class, seed, python2_pickles) -> dict[str, bytes]:
    train_images, train_labels, test_images, test_labels = official_images(train_per_class, test_per_class, seed)
    dump = _python2_pickle if python2_pickles else _python3_pickle
    members = {}
    batches = zip(np.array_split(train_images, 5), np.array_split(train_labels, 5))
    for number, (images, labels) in enumerate(batches, start=1):
        batch = _batch_dict(images, labels, f"training batch {number} of 5", python2_pickles)
        members[f"{OFFICIAL_FOLDER}/data_batch_{number}"] = dump(batch)
    members[f"{OFFICIAL_FOLDER}/test_batch"] = dump(
        _batch_dict(test_images, test_labels, "testing batch 1 of 1", python2_pickles)
    )
    meta = {"num_cases_per_batch": len(train_labels) // 5, "label_names": list(CLASS_NAMES), "num_vis": 3072}
    members[f"{OFFICIAL_FOLDER}/batches.meta"] = dump(_with_key_type(meta, python2_pickles))
    members[f"{OFFICIAL_FOLDER}/readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=...'>\n"
    return members


def _batch_dict(images, labels, batch_label, python2_pickles):
    batch = {
        "batch_label": batch_label,
        "labels": [int(label) for label in labels],
        "data": images.reshape(len(images), -1),  # RRR..GGG..BBB.. per row, as official
        "filenames": [f"synthetic_{index:05d}.png" for index in range(len(labels))],
    }
    return _with_key_type(batch, python2_pickles)


def _with_key_type(mapping, python2_pickles):
    # Python 2 pickles have bytes keys and bytes strings when read with encoding="bytes".
    if not python2_pickles:
        return mapping
    def as_bytes(value):
        if isinstance(value, str):
            return value.encode("ascii")
        if isinstance(value, list):
            return [as_bytes(item) for item in value]
        return value
    return {key.encode("ascii"): as_bytes(value) for key, value in mapping.items()}


class _Python2StylePickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for CIFAR batches.

    Python 3 pickles bytes at protocol 2 as calls to _codecs.encode, which the
    official archive never contains; Python 2 used plain (BIN)STRING opcodes.
    numpy 2 names its internals numpy._core; numpy 1 (and the archive) used numpy.core.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_string(self, value):
        raw = value.encode("latin-1") if isinstance(value, str) else value
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(value)

    dispatch[bytes] = save_python2_string
    dispatch[str] = save_python2_string

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core"):]
            self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode("ascii"))
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _python2_pickle(value) -> bytes:
    stream = io.BytesIO()
    _Python2StylePickler(stream, protocol=2).dump(value)
    return stream.getvalue()


def _python3_pickle(value) -> bytes:
    return pickle.dumps(value, protocol=4)


def image_folder_images(train_per_class: int = 3, test_per_class: int = 2, seed: int = 0):
    """What write_image_folder_archive stores, in the order a reader returns it (class, then file)."""
    train_images, train_labels, test_images, test_labels = official_images(train_per_class, test_per_class, seed)
    train_order = np.argsort(train_labels, kind="stable")
    test_order = np.argsort(test_labels, kind="stable")
    return train_images[train_order], train_labels[train_order], test_images[test_order], test_labels[test_order]


def write_image_folder_archive(
    path,
    train_per_class: int = 3,
    test_per_class: int = 2,
    fmt: str = "png",
    seed: int = 0,
    top_folder: str | None = None,
    extra_members: Iterable[Member] | None = None,
) -> Path:
    """A tar.gz with train/<class>/<NNNN>.<fmt> and test/<class>/<NNNN>.<fmt>."""
    splits = image_folder_images(train_per_class, test_per_class, seed)
    prefix = f"{top_folder}/" if top_folder else ""
    members = []
    for split, images, labels in (("train", *splits[:2]), ("test", *splits[2:])):
        for label in range(len(CLASS_NAMES)):
            for number, image in enumerate(images[labels == label]):
                name = f"{prefix}{split}/{CLASS_NAMES[label]}/{number:04d}.{fmt}"
                members.append(file_member(name, encode_image(image, fmt)))
    return _write_tar(path, [*members, *(extra_members or ())])


def encode_image(image_chw: np.ndarray, fmt: str = "png") -> bytes:
    stream = io.BytesIO()
    pil_format = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}[fmt]
    options = {"quality": 95} if pil_format == "JPEG" else {}
    Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0))).save(stream, pil_format, **options)
    return stream.getvalue()


def write_traversal_archive(path) -> Path:
    """Official layout plus a member whose '..' would land two folders above the extraction point."""
    escape = file_member(f"{OFFICIAL_FOLDER}/../../escaped-by-traversal.txt", b"escaped\n")
    return write_official_archive(path, extra_members=[escape])


def write_absolute_archive(path) -> Path:
    """Official layout plus a member with an absolute name, next to the archive itself."""
    target = Path(path).resolve().parent / "escaped-by-absolute-path.txt"
    return write_official_archive(path, extra_members=[file_member(str(target), b"escaped\n")])


def write_link_archive(path, kind: bytes = tarfile.SYMTYPE) -> Path:
    """Official layout plus a symlink (or, with kind=LNKTYPE, a hard link) to /etc/passwd."""
    link = special_member(f"{OFFICIAL_FOLDER}/passwd-link", kind, linkname="/etc/passwd")
    return write_official_archive(path, extra_members=[link])


def malicious_marker(archive_path) -> Path:
    """The file write_malicious_pickle_archive's payload would create if it ever ran."""
    return Path(archive_path).resolve().parent / "malicious-pickle-ran"


class _RunsShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_malicious_pickle_archive(path) -> Path:
    """Official layout whose data_batch_1 runs a shell command when unpickled normally.

    The command only creates ``malicious_marker(path)``, so a reader that
    wrongly executes it leaves evidence instead of doing harm.
    """
    members = _official_members(5, 2, seed=0, python2_pickles=True)
    command = f"touch {shlex.quote(str(malicious_marker(path)))}"
    # Python 2 style so that os.system is the first global the pickle names.
    members[f"{OFFICIAL_FOLDER}/data_batch_1"] = _python2_pickle(
        {b"data": _RunsShellCommand(command), b"labels": []}
    )
    return _write_tar(path, [file_member(name, data) for name, data in members.items()])


def _write_tar(path, members: list[Member]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for header, payload in members:
            tar.addfile(header, io.BytesIO(payload) if payload is not None else None)
    return path
