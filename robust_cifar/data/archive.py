"""Reading CIFAR-10 from an archive into plain numpy arrays, safely.

Two archive layouts are accepted:

* the official python archive (``cifar-10-batches-py/data_batch_1..5``,
  ``test_batch``, ``batches.meta``), whose members are pickles;
* an image-folder archive (``train/<class>/<file>.png|jpg`` and
  ``test/<class>/<file>``, optionally under one top-level folder).

Archives come from the network or from a path a user typed, so they are
treated as untrusted: every member's header is checked (kind, name, size, count)
before any member is read, nothing is ever extracted to disk, and the pickles
are loaded with an unpickler that can only rebuild numpy arrays.

Every problem with an archive is raised as one ArchiveError whose one-line
message names the file, says what is wrong, and says what to do.

Sections: the checks of the file (check_archive_file, check_local_archive),
read_archive and its layouts, member safety, the official python archive, the
image-folder archive.
"""

from __future__ import annotations

import io
import lzma
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from robust_cifar.data.arrays import IMAGE_SHAPE, SPLITS, CifarArrays, check_arrays
from robust_cifar.data.download import OFFICIAL_MD5, OFFICIAL_URL, SET_ARCHIVE_HINT, require_md5, verify_md5
from robust_cifar.data.unpickler import RefusedPickle, load_numpy_pickle
from robust_cifar.errors import ArchiveError

OFFICIAL_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
OFFICIAL_TEST_BATCH = "test_batch"
OFFICIAL_META = "batches.meta"
OFFICIAL_MEMBERS = (*OFFICIAL_TRAIN_BATCHES, OFFICIAL_TEST_BATCH, OFFICIAL_META)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# In label order: sorted, so sorted class folder names give the official labels.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# Caps on what tar headers claim, checked as each header is read and before any
# member's data is: gzip shrinks zeros ~1000x, so a 10 MB download can claim a
# 10 GB member, and reading it would exhaust memory.
#
# Largest member: an official batch is ~31 MB (10,000 rows of 3,072 pixel
# bytes, labels, file names), but other pickle protocols grow pixel bytes:
# Python 3 at protocols 1-2 stores them as UTF-8 text, up to 2 bytes each
# (~62 MB), and protocol 0, Python 2 cPickle's default, as escaped text, up to
# 4 characters each from Python 2 and 6 from Python 3 (~185 MB, all-zero
# pixels). 64 MiB would refuse those; 192 MiB still refuses a gigabyte member.
MAX_MEMBER_BYTES = 192 << 20
# A 32x32 PNG or JPEG is a few KB; 1 MiB leaves room for metadata and profiles.
MAX_IMAGE_BYTES = 1 << 20
# 60,000 images and ~23 folders, doubled by the ._ file macOS tar adds per file.
MAX_MEMBERS = 200_000
# All members together: the official archive unpacks to ~180 MB (~1.1 GB with
# protocol-0 batches); this also bounds the decompression work of skipping them.
MAX_UNPACKED_BYTES = 4 << 30
# pax and GNU long-name headers hold names and metadata, a few KB; tarfile
# reads each wholly into memory as soon as it meets it.
MAX_HEADER_EXTENSION_BYTES = 1 << 20

_USE_OFFICIAL_HINT = f"Use the official archive from {OFFICIAL_URL} (md5 {OFFICIAL_MD5})."


def check_archive_file(path: Path, expected_md5: str | None) -> None:
    """The archive is there and is the one named by its md5 (check_params runs this too, so a wrong
    `data.archive` is refused before DVC deletes the download stage's outputs)."""
    if path.is_dir():   # the image folder the archive unpacks to, perhaps: not what the download reads
        raise ArchiveError(f"CIFAR-10 archive {path} is a folder: set `data.archive` to the archive file itself "
                           "(a .tar.gz), or to \"\" to download the official one")
    if not path.is_file():
        raise ArchiveError(
            f"CIFAR-10 archive not found: {path}. Set `data.archive` to the path of an "
            "existing archive, e.g. `dvc exp run -S data.archive=path/to/cifar-10-python.tar.gz dvc.yaml`, "
            'or to "" to download the official one.'
        )
    verify_md5(path, expected_md5)
    try:   # the first header only: a file that is no tar archive at all is refused here, before DVC deletes anything
        with tarfile.open(path, mode="r:*", tarinfo=_CappedTarInfo) as tar:
            tar.next()
    except ArchiveError as error:
        raise ArchiveError(f"{path}: {error}") from error
    except _READ_ERRORS as error:
        raise _unreadable(path, error) from error


# What tarfile and the gzip/bz2/xz layers raise for damaged or truncated files; RecursionError for a long
# chain of pax headers.
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, RecursionError)


def _unreadable(path: Path, error: BaseException) -> ArchiveError:
    return ArchiveError(f"{path} is not a readable tar archive, or is truncated ({type(error).__name__}: "
                        f"{_one_line(str(error))}). Re-download it, or {SET_ARCHIVE_HINT}.")


def check_local_archive(path: Path, expected_md5: str | None) -> None:
    """`data.archive` as check_params takes it: check_archive_file, and require_md5."""
    check_archive_file(path, expected_md5)
    require_md5(path, expected_md5)


def read_archive(path, expected_md5: str | None = None) -> CifarArrays:
    """Read CIFAR-10 from an official python archive or an image-folder archive."""
    path = Path(path)
    # Before anything is parsed: a wrong file should be refused, not half-read.
    check_archive_file(path, expected_md5)
    try:
        with tarfile.open(path, mode="r:*", tarinfo=_CappedTarInfo) as tar:
            members = _checked_members(tar)
            arrays = _read_known_layout(tar, members)
    except ArchiveError as error:
        # Messages from inside name the member; this says which archive it is in.
        raise ArchiveError(f"{path}: {error}") from error
    except _READ_ERRORS as error:
        raise _unreadable(path, error) from error
    check_arrays(arrays, source=str(path), fix=f"re-create it from the official archive ({OFFICIAL_URL}).")
    return arrays


def _read_known_layout(tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> CifarArrays:
    files = [member for member in members if member.isfile() and not _is_dotfile(member.name)]
    official = _find_official_members(files)
    if official is not None:
        pictures = [member for member in files if member.name.lower().endswith(IMAGE_SUFFIXES)]
        if pictures:   # which of the two is the dataset is anyone's guess: read neither
            raise ArchiveError(
                f"the archive holds both layouts, the official python batches and {len(pictures):,} image files "
                f"(such as {_printable(pictures[0].name)!r}), so which is CIFAR-10 is ambiguous. Rebuild it with "
                f"one of them, or use the official archive from {OFFICIAL_URL}."
            )
        return _read_official(tar, official)
    images = _find_image_folder_members(files)
    if images:
        return _read_image_folder(tar, images)
    found = ", ".join(_printable(member.name) for member in files[:5]) or "no files"
    raise ArchiveError(
        "the archive is neither CIFAR-10 layout: expected either the official python "
        f"archive ({', '.join(f'cifar-10-batches-py/{name}' for name in OFFICIAL_MEMBERS)}) "
        "or image folders (train/<class>/<image>.png|jpg and test/<class>/<image>, "
        f"optionally under one top-level folder), but found {found}. Use the official "
        f"archive from {OFFICIAL_URL}."
    )


def _name_parts(name: str) -> list[str]:
    # Plain string splitting rather than pathlib: this runs for each of 60,000
    # members, and "./train/..." (from `tar -C dir .`) must equal "train/...".
    return [part for part in name.split("/") if part not in ("", ".")]


def _is_dotfile(name: str) -> bool:
    # macOS tar adds ._foo resource forks and .DS_Store files; they are not data.
    parts = _name_parts(name)
    return bool(parts) and parts[-1].startswith(".")


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so a message stays one line."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- member safety ---------------------------------------------------------

_HEADER_EXTENSION_TYPES = (
    tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
)


class _CappedTarInfo(tarfile.TarInfo):
    """A tar header that refuses an oversized pax or GNU long-name extension.

    tarfile reads such an extension wholly into memory the moment it parses
    its header, before any caller sees a member, so the check has to sit in
    the header class (TarFile's documented ``tarinfo`` hook). _proc_member is
    where tarfile dispatches each parsed header, extensions included.
    """

    def _proc_member(self, archive):
        if self.type in _HEADER_EXTENSION_TYPES and not 0 <= self.size <= MAX_HEADER_EXTENSION_BYTES:
            raise ArchiveError(
                f"archive member {self.name!r} is a tar header extension (pax or GNU long name) "
                f"claiming {self.size:,} bytes, over the {_mebibytes(MAX_HEADER_EXTENSION_BYTES)} cap: "
                "such extensions hold only names and metadata, a few KB, so the archive is "
                f"corrupt or malicious and was not read. {_USE_OFFICIAL_HINT}"
            )
        return super()._proc_member(archive)


def _checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """All members, each header checked when read, before any member's data is.

    Iterating reads one header at a time, and the loop body runs before the
    next header is read, so a refused member's data is neither read nor even
    skipped over (which for a .tar.gz means decompressing it).
    """
    members = []
    unpacked_bytes = 0
    for member in tar:
        if len(members) >= MAX_MEMBERS:
            raise ArchiveError(
                f"the archive has more than {MAX_MEMBERS:,} members, but a CIFAR-10 archive holds "
                "at most 60,000 images plus their folders, so it is corrupt, malicious or not "
                f"CIFAR-10 and was not read. {_USE_OFFICIAL_HINT}"
            )
        _refuse_unsafe_member(member)
        _refuse_oversized_member(member)
        unpacked_bytes += member.size
        if unpacked_bytes > MAX_UNPACKED_BYTES:
            raise ArchiveError(
                f"the archive's members add up to more than {_mebibytes(MAX_UNPACKED_BYTES)} by "
                f"member {member.name!r}, but CIFAR-10 unpacks to about 180 MB, so the archive is "
                f"corrupt, malicious or not CIFAR-10 and was not read. {_USE_OFFICIAL_HINT}"
            )
        members.append(member)
    return members


def _refuse_oversized_member(member: tarfile.TarInfo) -> None:
    if 0 <= member.size <= MAX_MEMBER_BYTES:
        return
    raise ArchiveError(
        f"archive member {member.name!r} claims {member.size:,} bytes, over the "
        f"{_mebibytes(MAX_MEMBER_BYTES)} cap for any member (the largest CIFAR-10 member, a "
        "batch of 10,000 images, is about 31 MB), so the archive is corrupt or malicious and "
        f"was not read. {_USE_OFFICIAL_HINT}"
    )


def _mebibytes(n_bytes: int) -> str:
    return f"{n_bytes / (1 << 20):g} MiB"


_MEMBER_KINDS = (
    (tarfile.TarInfo.issym, "a symbolic link"),
    (tarfile.TarInfo.islnk, "a hard link"),
    (tarfile.TarInfo.ischr, "a character device"),
    (tarfile.TarInfo.isblk, "a block device"),
    (tarfile.TarInfo.isfifo, "a FIFO"),
)


def _refuse_unsafe_member(member: tarfile.TarInfo) -> None:
    """Refuse members that could reach outside the archive if anyone ever extracted it."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        problem = "has an absolute path"
    elif ".." in re.split(r"[\\/]", name):
        problem = "has a '..' component that points outside the archive"
    elif not (member.isfile() or member.isdir()):
        kind = next((label for test, label in _MEMBER_KINDS if test(member)), "not a regular file")
        link = f" to {member.linkname!r}" if member.issym() or member.islnk() else ""
        problem = f"is {kind}{link}"
    else:
        return
    raise ArchiveError(
        f"archive member {name!r} {problem}; a CIFAR-10 archive holds only plain files "
        f"and folders, so this archive is corrupt or malicious and was not read. {_USE_OFFICIAL_HINT}"
    )


# --- official python archive -------------------------------------------------


def _find_official_members(files: list[tarfile.TarInfo]) -> dict[str, tarfile.TarInfo] | None:
    """Map each official batch name to its member, or None if this is not that layout."""
    by_folder: dict[str, dict[str, tarfile.TarInfo]] = {}
    for member in files:
        parts = _name_parts(member.name)
        if parts and parts[-1] in OFFICIAL_MEMBERS:
            by_folder.setdefault("/".join(parts[:-1]), {})[parts[-1]] = member
    if not by_folder:
        return None
    folder, found = max(by_folder.items(), key=lambda item: len(item[1]))
    missing = [name for name in OFFICIAL_MEMBERS if name not in found]
    if missing:
        raise ArchiveError(
            f"the archive looks like the official CIFAR-10 python archive (folder "
            f"{folder!r}) but lacks {', '.join(missing)}: it is incomplete or corrupt. "
            f"Re-download it from {OFFICIAL_URL}, or {SET_ARCHIVE_HINT}."
        )
    return found


def _read_official(tar: tarfile.TarFile, official: dict[str, tarfile.TarInfo]) -> CifarArrays:
    loaded = {name: _unpickle_member(tar, member) for name, member in _in_archive_order(official)}

    def arrays_of(name):
        return _batch_arrays(loaded[name], official[name].name)

    train = [arrays_of(name) for name in OFFICIAL_TRAIN_BATCHES]
    test_images, test_labels = arrays_of(OFFICIAL_TEST_BATCH)
    return CifarArrays(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=_label_names(loaded[OFFICIAL_META], official[OFFICIAL_META].name),
    )


def _in_archive_order(chosen: dict[str, tarfile.TarInfo]):
    # A .tar.gz can only seek backwards by decompressing from the start again,
    # so members are read in the order they are stored.
    return sorted(chosen.items(), key=lambda item: item[1].offset)


def _batch_arrays(batch: dict, member_name: str) -> tuple[np.ndarray, np.ndarray]:
    data_field = _field(batch, "data", member_name)
    labels_field = _field(batch, "labels", member_name)
    try:
        data = np.asarray(data_field)
        labels = np.asarray(labels_field, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise ArchiveError(
            f"archive member {member_name!r} has data or labels that are not arrays of numbers "
            f"({_one_line(str(error))}): the archive is corrupt. Re-download it from {OFFICIAL_URL}."
        ) from error
    row_length = int(np.prod(IMAGE_SHAPE))
    if (
        data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row_length
        or labels.ndim != 1 or len(data) != len(labels)
    ):
        raise ArchiveError(
            f"archive member {member_name!r} holds data of dtype {data.dtype} and shape "
            f"{data.shape} with labels of shape {labels.shape}, but a CIFAR-10 batch holds uint8 "
            f"rows of {row_length} values, one per label: the archive is corrupt. "
            f"Re-download it from {OFFICIAL_URL}."
        )
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _field(batch, key: str, member_name: str):
    """Look up ``key`` whether the pickle stored it as bytes (Python 2) or str."""
    if isinstance(batch, dict):
        for candidate in (key.encode("ascii"), key):
            if candidate in batch:
                return batch[candidate]
    raise ArchiveError(
        f"archive member {member_name!r} has no {key!r} entry, which every CIFAR-10 "
        f"batch file has: the archive is corrupt. Re-download it from {OFFICIAL_URL}."
    )


def _label_names(meta, member_name: str) -> tuple[str, ...]:
    field = _field(meta, "label_names", member_name)
    try:
        names = tuple(_as_text(name) for name in field)
    except (TypeError, UnicodeDecodeError):
        names = None
    if names is not None and len(names) == len(CIFAR10_CLASSES):
        return names
    found = "no list of names" if names is None else f"{len(names)} names"
    raise ArchiveError(
        f"archive member {member_name!r} has {found} under 'label_names', but CIFAR-10 has "
        f"{len(CIFAR10_CLASSES)} classes: the archive is corrupt or not CIFAR-10. Re-download "
        f"it from {OFFICIAL_URL}."
    )


def _as_text(name) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def _unpickle_member(tar: tarfile.TarFile, member: tarfile.TarInfo):
    payload = tar.extractfile(member).read()
    try:
        return load_numpy_pickle(payload)
    except RefusedPickle as refused:
        raise ArchiveError(
            f"archive member {member.name!r} {_printable(str(refused))}, which a CIFAR batch never needs; the "
            f"archive is corrupt or malicious and was not loaded. {_USE_OFFICIAL_HINT}"
        ) from None
    except Exception as error:  # a damaged pickle can fail in many ways
        raise ArchiveError(
            f"archive member {member.name!r} is not a readable CIFAR-10 batch "
            f"({type(error).__name__}: {_one_line(str(error))}): the archive is corrupt. "
            f"Re-download it from {OFFICIAL_URL}."
        ) from error


# --- image-folder archive ------------------------------------------------------


@dataclass(frozen=True)
class _ImageMember:
    member: tarfile.TarInfo
    split: str
    class_name: str
    file_name: str


def _find_image_folder_members(files: list[tarfile.TarInfo]) -> list[_ImageMember]:
    image_files = [member for member in files if member.name.lower().endswith(IMAGE_SUFFIXES)]
    if not image_files:
        return []
    top_folder = _shared_top_folder([member.name for member in image_files])
    found = []
    for member in image_files:
        parts = _name_parts(member.name)[1 if top_folder else 0 :]
        if len(parts) != 3 or parts[0] not in SPLITS:
            raise ArchiveError(
                f"archive member {member.name!r} is an image outside the expected "
                "layout train/<class>/<image> or test/<class>/<image> (optionally under "
                "one top-level folder). Rebuild the archive in that layout, or use the "
                f"official archive from {OFFICIAL_URL}."
            )
        found.append(_ImageMember(member, *parts))
    return found


def _shared_top_folder(names: list[str]) -> str | None:
    """The one folder every name sits under (other than train/test), if any."""
    all_parts = [_name_parts(name) for name in names]
    tops = {parts[0] for parts in all_parts}
    if len(tops) == 1 and all(len(parts) > 1 for parts in all_parts):
        (top,) = tops
        if top not in SPLITS:
            return top
    return None


def _read_image_folder(tar: tarfile.TarFile, images: list[_ImageMember]) -> CifarArrays:
    for image in images:
        _refuse_oversized_image(image.member)
    class_names = _class_names_of(images)
    class_index = {name: index for index, name in enumerate(class_names)}
    # Output order: train before test, then class, then file name, so results
    # never depend on how the archive happened to be packed.
    ordered = sorted(
        images,
        key=lambda image: (SPLITS.index(image.split), class_index[image.class_name], image.file_name),
    )
    n_train = sum(image.split == "train" for image in ordered)
    # Decode in archive order (see _in_archive_order), each image into its output slot.
    decode_order = sorted(range(len(ordered)), key=lambda position: ordered[position].member.offset)
    height, width = IMAGE_SHAPE[1:]
    pixels_hwc = np.empty((len(ordered), height, width, IMAGE_SHAPE[0]), np.uint8)
    with tqdm(total=len(ordered), unit="img", desc="decoding images") as progress:
        for position in decode_order:
            pixels_hwc[position] = _decode_image(tar, ordered[position].member)
            progress.update()
    pixels = np.ascontiguousarray(pixels_hwc.transpose(0, 3, 1, 2))  # HWC -> CHW, all at once
    labels = np.array([class_index[image.class_name] for image in ordered], dtype=np.int64)
    return CifarArrays(
        train_images=pixels[:n_train],
        train_labels=labels[:n_train],
        test_images=pixels[n_train:],
        test_labels=labels[n_train:],
        class_names=class_names,
    )


def _refuse_oversized_image(member: tarfile.TarInfo) -> None:
    if member.size <= MAX_IMAGE_BYTES:
        return
    raise ArchiveError(
        f"archive member {member.name!r} claims {member.size:,} bytes, over the "
        f"{_mebibytes(MAX_IMAGE_BYTES)} cap per image (a 32x32 PNG or JPEG is a few KB), so it is "
        "not a CIFAR-10 image and the archive was not read. Replace it with a 32x32 PNG or JPEG "
        f"and rebuild the archive, or use the official archive from {OFFICIAL_URL}."
    )


def _class_names_of(images: list[_ImageMember]) -> tuple[str, ...]:
    classes = {split: {image.class_name for image in images if image.split == split} for split in SPLITS}
    if classes["train"] != classes["test"]:
        raise ArchiveError(
            "the image-folder archive's train and test splits have different classes "
            f"(only in train: {_describe_names(classes['train'] - classes['test'])}; only in "
            f"test: {_describe_names(classes['test'] - classes['train'])}). Every class needs a "
            "folder under both train/ and test/; rebuild the archive accordingly."
        )
    _refuse_missing_classes(classes["train"])
    # Sorted folder names: for CIFAR-10 (and for 0..9) this is exactly the official label order.
    return tuple(sorted(classes["train"]))


def _refuse_missing_classes(names: set[str]) -> None:
    """Refuse class folders that are not CIFAR-10's ten, naming what is missing where possible."""
    expected = _implied_class_names(names)
    missing, unexpected = (expected - names, names - expected) if expected else (set(), set())
    if len(names) == len(CIFAR10_CLASSES) and not missing and not unexpected:
        return
    problems = [f"missing {_describe_names(missing)}"] if missing else []
    problems += [f"unexpected {_describe_names(unexpected)}"] if unexpected else []
    problems = problems or [f"{len(names)} classes instead of {len(CIFAR10_CLASSES)}"]
    raise ArchiveError(
        f"the image-folder archive's class folders ({_describe_names(names)}) are not "
        f"CIFAR-10's {len(CIFAR10_CLASSES)} classes: {'; '.join(problems)}. Give each class a "
        f"folder under both train/ and test/, named {', '.join(CIFAR10_CLASSES)} (or 0..9), and "
        f"rebuild the archive, or use the official archive from {OFFICIAL_URL}."
    )


def _implied_class_names(names: set[str]) -> set[str] | None:
    """The full set of class folder names that ``names`` imply, if they imply one.

    Any official class name implies all ten; numbered folders imply the label
    indices 0..9 (so 0..3 and 5..10 lack 4). Other names (in another language,
    say) imply nothing beyond there being ten.
    """
    if names & set(CIFAR10_CLASSES):
        return set(CIFAR10_CLASSES)
    if names and all(name.isdecimal() for name in names):
        return {str(label) for label in range(len(CIFAR10_CLASSES))}
    return None


def _describe_names(names) -> str:
    return ", ".join(_printable(name) for name in sorted(names)) or "none"


def _decode_image(tar: tarfile.TarFile, member: tarfile.TarInfo) -> np.ndarray:
    payload = tar.extractfile(member).read()
    try:
        # formats= keeps Pillow from trying every decoder it has on untrusted bytes.
        with Image.open(io.BytesIO(payload), formats=("PNG", "JPEG")) as image:
            # Size is known from the header, so a wrong-size image is refused
            # before its pixels are decoded.
            if image.size != IMAGE_SHAPE[1:]:
                raise ArchiveError(
                    f"archive member {member.name!r} is {image.size[0]}x{image.size[1]} "
                    f"pixels, but CIFAR-10 images are {IMAGE_SHAPE[2]}x{IMAGE_SHAPE[1]}. "
                    "Resize the images to 32x32 before archiving, or use the official "
                    f"archive from {OFFICIAL_URL}."
                )
            # JPEGs are usually RGB already; convert() would only copy them.
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except ArchiveError:
        raise
    except Exception as error:  # a damaged image can fail in many ways
        raise ArchiveError(
            f"archive member {member.name!r} is not a readable PNG or JPEG image "
            f"({_one_line(str(error))}). Replace or remove that file and rebuild the archive."
        ) from error
