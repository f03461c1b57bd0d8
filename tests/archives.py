"""Small synthetic CIFAR-10 archives for tests: valid ones in both layouts, and hostile ones.

Everything here is deterministic and takes milliseconds, so tests can build
fresh archives in ``tmp_path`` instead of sharing fixtures on disk.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import shlex
import struct
import tarfile
import types
from collections.abc import Iterable, Sequence
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
    protocol: int | None = None,
    numpy1_names: bool = False,
) -> Path:
    """A tar.gz in the official cifar-10-python layout.

    With ``python2_pickles`` the batches are the kind of pickle the official
    archive holds (Python 2 strings, numpy.core names; protocol 2 unless
    ``protocol`` says 0 or 1); without, they are what Python 3 writes
    (pickle.dumps at ``protocol``, default pickle.DEFAULT_PROTOCOL, str keys),
    with numpy 2's names unless ``numpy1_names``. Readers should accept all.
    """
    style = PickleStyle(python2_pickles, protocol, numpy1_names)
    members = _official_members(train_per_class, test_per_class, seed, style)
    return _write_tar(path, [*(file_member(name, data) for name, data in members.items()), *(extra_members or ())])


def official_images(train_per_class: int = 5, test_per_class: int = 2, seed: int = 0):
    """The (train_images, train_labels, test_images, test_labels) write_official_archive stores."""
    train_images, train_labels = make_images(train_per_class, seed=seed)
    test_images, test_labels = make_images(test_per_class, seed=seed + 1)
    return train_images, train_labels, test_images, test_labels


def _official_members(train_per_class, test_per_class, seed, style: PickleStyle) -> dict[str, bytes]:
    train_images, train_labels, test_images, test_labels = official_images(train_per_class, test_per_class, seed)
    members = {}
    batches = zip(np.array_split(train_images, 5), np.array_split(train_labels, 5))
    for number, (images, labels) in enumerate(batches, start=1):
        members[f"{OFFICIAL_FOLDER}/data_batch_{number}"] = batch_pickle(
            images, labels, style, f"training batch {number} of 5"
        )
    members[f"{OFFICIAL_FOLDER}/test_batch"] = batch_pickle(test_images, test_labels, style, "testing batch 1 of 1")
    # The official meta holds plain ints; a writer that counted with numpy leaves
    # an np.int64, so readers must rebuild numpy scalars too.
    meta = {"num_cases_per_batch": np.int64(len(train_labels) // 5), "label_names": list(CLASS_NAMES), "num_vis": 3072}
    members[f"{OFFICIAL_FOLDER}/batches.meta"] = style.dumps(_with_key_type(meta, style.python2))
    members[f"{OFFICIAL_FOLDER}/readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=...'>\n"
    return members


def batch_pickle(images: np.ndarray, labels: np.ndarray, style: PickleStyle, batch_label: str = "batch") -> bytes:
    """One official-format batch file holding ``images`` (N, 3, 32, 32) and ``labels``."""
    return style.dumps(_batch_dict(images, labels, batch_label, style.python2))


def _batch_dict(images, labels, batch_label, python2: bool):
    batch = {
        "batch_label": batch_label,
        "labels": [int(label) for label in labels],
        "data": images.reshape(len(images), -1),  # RRR..GGG..BBB.. per row, as official
        "filenames": [f"synthetic_{index:05d}.png" for index in range(len(labels))],
    }
    return _with_key_type(batch, python2)


def _with_key_type(mapping, python2: bool):
    # Python 2 pickles have bytes keys and bytes strings when read with encoding="bytes".
    if not python2:
        return mapping
    def as_bytes(value):
        if isinstance(value, str):
            return value.encode("ascii")
        if isinstance(value, list):
            return [as_bytes(item) for item in value]
        return value
    return {key.encode("ascii"): as_bytes(value) for key, value in mapping.items()}


class PickleStyle:
    """How a batch is pickled: by Python 2 or 3, at which protocol, with numpy 1's or 2's names."""

    def __init__(self, python2: bool = True, protocol: int | None = None, numpy1_names: bool = False):
        default = 2 if python2 else pickle.DEFAULT_PROTOCOL
        self.python2 = python2
        self.protocol = default if protocol is None else protocol
        self.numpy1_names = numpy1_names or python2  # Python 2 never had numpy 2
        if python2 and self.protocol > 2:
            raise ValueError(f"Python 2 pickles at protocols 0-2, not {self.protocol}")

    def __repr__(self):
        python = "python2" if self.python2 else "python3"
        numpy = "numpy1" if self.numpy1_names else "numpy2"
        return f"{python}-{numpy}-protocol{self.protocol}"

    def dumps(self, value) -> bytes:
        if self.python2 or self.numpy1_names:
            return self.dumps_by_hand(value)
        return pickle.dumps(value, protocol=self.protocol)  # exactly what Python 3 with numpy 2 writes

    def dumps_by_hand(self, value) -> bytes:
        """Through pickle's pure-Python pickler, adjusted to this style; it can also write NamedGlobals."""
        pickler_class = _Python2StylePickler if self.python2 else _NamingPickler
        stream = io.BytesIO()
        pickler_class(stream, self.protocol, numpy1_names=self.numpy1_names).dump(value)
        return stream.getvalue()


class NamedGlobal:
    """A reference to ``module.name`` in a pickle, written whether or not it exists here."""

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name

    def __call__(self, *args):
        # pickle only writes a call of something callable; this is never called.
        raise AssertionError(f"{self.module}.{self.name} stand-in called")


class Call:
    """Pickles as ``function(*args)``: what an ordinary unpickler would run on loading it.

    ``function`` is a NamedGlobal or another Call (whose result is then called).
    """

    def __init__(self, function, *args):
        self.function = function
        self.args = args

    def __reduce__(self):
        return self.function, self.args

    def __call__(self, *args):
        raise AssertionError("Call stand-in called")


class _NamingPickler(pickle._Pickler):
    """pickle's pure-Python pickler, with control over the names of the globals it writes.

    numpy 2 names its internals numpy._core; numpy 1 (and the official archive)
    used numpy.core, which ``numpy1_names`` writes instead. A NamedGlobal is
    written as given, which is how hostile pickles name what they want called.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, stream, protocol: int, numpy1_names: bool = False):
        super().__init__(stream, protocol=protocol)
        self.numpy1_names = numpy1_names

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if self.numpy1_names and module.startswith("numpy._core"):
            self.write_global("numpy.core" + module[len("numpy._core"):], name or obj.__qualname__)
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    # pickle's dispatch table holds its own save_global for functions (such as
    # numpy's _frombuffer); builtins and classes reach this one by method lookup.
    dispatch[types.FunctionType] = save_global

    def save_named_global(self, named: NamedGlobal):
        self.write_global(named.module, named.name)

    dispatch[NamedGlobal] = save_named_global

    def write_global(self, module: str, name: str):
        # The opcodes pickle itself uses: STACK_GLOBAL from protocol 4, GLOBAL before.
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("utf-8"))


class _Python2StylePickler(_NamingPickler):
    """Writes what Python 2's cPickle wrote for CIFAR batches.

    Python 3 pickles bytes at protocols 0-2 as calls to _codecs.encode, which
    the official archive never contains; Python 2 used plain string opcodes:
    STRING with the string's Python 2 repr at protocol 0, (SHORT_)BINSTRING after.
    """

    dispatch = dict(_NamingPickler.dispatch)

    def save_python2_string(self, value):
        raw = value.encode("latin-1") if isinstance(value, str) else value
        if self.proto == 0:
            self.write(pickle.STRING + _python2_repr(raw) + b"\n")
        elif len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(value)

    dispatch[bytes] = save_python2_string
    dispatch[str] = save_python2_string


def _python2_repr(raw: bytes) -> bytes:
    """Python 2's repr() of a str holding ``raw`` (checked against Python 2.7 for all bytes)."""
    body = codecs.escape_encode(raw)[0]  # escapes exactly as Python 2's repr, with ' quoted
    if b"'" in raw and b'"' not in raw:
        return b'"' + body.replace(b"\\'", b"'") + b'"'
    return b"'" + body + b"'"


class _StandIn:
    """Anything a pickle names or builds, so it can be loaded without importing or running anything."""

    def __init__(self, *args):
        pass

    def __call__(self, *args):
        return _StandIn()

    def __setstate__(self, state):
        pass


def globals_named(payload: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle refers to; nothing is imported or run to find them."""
    named = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            named.add((module, name))
            return _StandIn()

    Recorder(io.BytesIO(payload), encoding="bytes").load()
    return named


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
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """A tar.gz with train/<class>/<NNNN>.<fmt> and test/<class>/<NNNN>.<fmt>.

    Images of label i go in the folder ``class_names[i]``; with fewer than ten
    names, the images of the remaining labels are left out.
    """
    splits = image_folder_images(train_per_class, test_per_class, seed)
    prefix = f"{top_folder}/" if top_folder else ""
    members = []
    for split, images, labels in (("train", *splits[:2]), ("test", *splits[2:])):
        for label, class_name in enumerate(class_names):
            for number, image in enumerate(images[labels == label]):
                name = f"{prefix}{split}/{class_name}/{number:04d}.{fmt}"
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
    """The file a hostile pickle's payload would create if it ever ran."""
    return Path(archive_path).resolve().parent / "malicious-pickle-ran"


def command_creating_marker(archive_path) -> str:
    """A shell command that only creates ``malicious_marker(archive_path)``: evidence, not harm."""
    return f"touch {shlex.quote(str(malicious_marker(archive_path)))}"


def write_malicious_pickle_archive(path) -> Path:
    """Official layout whose data_batch_1 runs a shell command when unpickled normally.

    The command only creates ``malicious_marker(path)``, so a reader that
    wrongly executes it leaves evidence instead of doing harm.
    """
    payload = Call(NamedGlobal("os", "system"), command_creating_marker(path))
    return write_hostile_pickle_archive(path, payload, PickleStyle(python2=True))


def write_hostile_pickle_archive(path, payload, style: PickleStyle) -> Path:
    """Official layout whose data_batch_1 holds ``payload`` (a Call, say) as its data.

    data_batch_1 comes first in the archive, so it is the first pickle a reader loads.
    """
    members = _official_members(5, 2, seed=0, style=PickleStyle())
    batch = _with_key_type({"data": payload, "labels": []}, style.python2)
    members[f"{OFFICIAL_FOLDER}/data_batch_1"] = style.dumps_by_hand(batch)
    return _write_tar(path, [file_member(name, data) for name, data in members.items()])


_ZEROS_CHUNK = 1 << 20


def write_archive_with_huge_member(path, name: str, claimed_bytes: int, kind: bytes = tarfile.REGTYPE) -> Path:
    """A .tar.gz of the official layout, then member ``name`` that really holds ``claimed_bytes`` zeros.

    It takes milliseconds and about 1 KB per MiB claimed to write: gzip files
    may be concatenated, so one compressed MiB of zeros is simply repeated, yet
    a reader that read or even skipped the member would decompress it all.
    """
    official = [
        file_member(member_name, data)
        for member_name, data in _official_members(5, 2, 0, PickleStyle()).items()
        if member_name != name  # the huge member takes the place of an official one of that name
    ]
    huge = tarfile.TarInfo(name)
    huge.size = claimed_bytes
    huge.type = kind
    head = b"".join(_tar_block(header, payload) for header, payload in official) + huge.tobuf(tarfile.GNU_FORMAT)
    # The member's zeros, padding to a whole block, then the two zero blocks that end a tar archive.
    zeros_after_head = claimed_bytes + (-claimed_bytes % tarfile.BLOCKSIZE) + 2 * tarfile.BLOCKSIZE
    compressed_chunk = gzip.compress(bytes(_ZEROS_CHUNK), mtime=0)
    path = Path(path)
    with open(path, "wb") as sink:
        sink.write(gzip.compress(head, mtime=0))
        for _ in range(-(-zeros_after_head // _ZEROS_CHUNK)):
            sink.write(compressed_chunk)
    return path


def _tar_block(header: tarfile.TarInfo, payload: bytes) -> bytes:
    """One member as tarfile writes it: header, data, zeros up to a whole block."""
    return header.tobuf(tarfile.GNU_FORMAT) + payload + bytes(-len(payload) % tarfile.BLOCKSIZE)


def _write_tar(path, members: list[Member]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for header, payload in members:
            tar.addfile(header, io.BytesIO(payload) if payload is not None else None)
    return path
