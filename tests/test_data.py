"""Reading CIFAR-10 archives: both layouts, checksums, hostile archives, download, .npz cache."""

import hashlib
import pickle
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from robust_cifar.data import archive, arrays as cifar_arrays, download
from robust_cifar.data.arrays import CifarArrays
from robust_cifar.errors import ArchiveError
from robust_cifar.errors import InputError
from tests import archives


def tree_listing(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def refusal(path, **kwargs) -> str:
    """The message read_archive refuses ``path`` with: one line (no traceback) naming the archive."""
    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(path, **kwargs)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message
    return message


def refusal_and_peak_memory(path) -> tuple[str, int]:
    """The refusal's message and the most memory Python held while reading up to it."""
    tracemalloc.start()
    try:
        message = refusal(path)
        return message, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def record_headers_read(monkeypatch) -> list:
    """Every member header tarfile reads from now on, in order (None at the end of an archive)."""
    headers = []
    original_next = tarfile.TarFile.next

    def recording_next(self):
        member = original_next(self)
        headers.append(member)
        return member

    monkeypatch.setattr(tarfile.TarFile, "next", recording_next)
    return headers


def forbid_reading_members(monkeypatch):
    def extractfile_must_not_be_called(*args, **kwargs):
        raise AssertionError("a member was read before all members were checked")

    monkeypatch.setattr(tarfile.TarFile, "extractfile", extractfile_must_not_be_called)


def assert_same_arrays(arrays: CifarArrays, train_images, train_labels, test_images, test_labels):
    assert arrays.train_images.dtype == np.uint8 and arrays.test_images.dtype == np.uint8
    assert arrays.train_labels.dtype == np.int64 and arrays.test_labels.dtype == np.int64
    np.testing.assert_array_equal(arrays.train_images, train_images)
    np.testing.assert_array_equal(arrays.train_labels, train_labels)
    np.testing.assert_array_equal(arrays.test_images, test_images)
    np.testing.assert_array_equal(arrays.test_labels, test_labels)


# --- official python archive ---------------------------------------------------


@pytest.mark.parametrize("python2_pickles", [True, False], ids=["python2-bytes-keys", "python3-str-keys"])
def test_official_archive_round_trips_exactly(tmp_path, python2_pickles):
    path = archives.write_official_archive(
        tmp_path / "cifar.tar.gz", train_per_class=4, test_per_class=2, python2_pickles=python2_pickles
    )
    md5 = hashlib.md5(path.read_bytes()).hexdigest()

    arrays = archive.read_archive(path, expected_md5=md5.upper())  # md5 case should not matter

    assert arrays.train_images.shape == (40, 3, 32, 32)
    assert arrays.test_images.shape == (20, 3, 32, 32)
    assert np.bincount(arrays.train_labels).tolist() == [4] * 10
    assert np.bincount(arrays.test_labels).tolist() == [2] * 10
    assert arrays.class_names == archives.CLASS_NAMES
    assert_same_arrays(arrays, *archives.official_images(train_per_class=4, test_per_class=2))


def test_plain_uncompressed_tar_is_read_too(tmp_path):
    arrays = archive.read_archive(archives.write_official_archive(tmp_path / "cifar.tar"))
    assert_same_arrays(arrays, *archives.official_images())


def test_incomplete_official_archive_names_the_missing_batches(tmp_path):
    only_one_batch = archives.file_member("cifar-10-batches-py/data_batch_1", b"not read")
    path = archives._write_tar(tmp_path / "partial.tar.gz", [only_one_batch])
    with pytest.raises(ArchiveError, match="lacks data_batch_2, data_batch_3.*test_batch, batches.meta"):
        archive.read_archive(path)


def test_an_archive_holding_both_layouts_is_refused_as_ambiguous(tmp_path):
    images, _ = archives.make_images(1, 1)
    picture = archives.file_member("train/airplane/0.png", archives.encode_image(images[0]))
    path = archives.write_official_archive(tmp_path / "mixed.tar.gz", extra_members=[picture])
    with pytest.raises(ArchiveError, match=r"holds both layouts, the official python batches and 1 image files "
                                           r"\(such as 'train/airplane/0.png'\)"):
        archive.read_archive(path)


def test_truncated_archive_is_refused_as_unreadable(tmp_path):
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="truncated"):
        archive.read_archive(path)  # no md5 given, so only the reader itself can notice


@pytest.mark.parametrize("content", [b"not an archive\n", b"", b"\x1f\x8b" + bytes(100)], ids=["text", "empty", "bad gzip"])
def test_a_file_that_is_no_tar_archive_is_refused_by_the_early_check_even_with_its_md5(tmp_path, content):
    """check_params runs check_archive_file before DVC deletes the download's outputs: the md5 alone
    would pass a file that is no archive at all."""
    path = tmp_path / "fake.tar.gz"
    path.write_bytes(content)
    with pytest.raises(ArchiveError, match="fake.tar.gz is not a readable tar archive"):
        archive.check_archive_file(path, hashlib.md5(content).hexdigest())


def test_a_folder_named_as_the_archive_is_refused_as_a_folder(tmp_path):
    with pytest.raises(ArchiveError, match=f"archive {tmp_path} is a folder: set `data.archive` to the archive file"):
        archive.check_archive_file(tmp_path, None)


def test_the_early_check_passes_a_real_archive(tmp_path):
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz")
    archive.check_archive_file(path, hashlib.md5(path.read_bytes()).hexdigest())


PICKLE_STYLES = [
    *(archives.PickleStyle(python2=True, protocol=protocol) for protocol in range(3)),
    *(archives.PickleStyle(python2=False, protocol=protocol) for protocol in range(6)),
    *(archives.PickleStyle(python2=False, protocol=protocol, numpy1_names=True) for protocol in range(6)),
]


def globals_each_writer_names(style: archives.PickleStyle) -> set[tuple[str, str]]:
    """What the writer ``style`` describes puts in a batch file, by how pickle and numpy work."""
    core = "numpy.core" if style.numpy1_names else "numpy._core"
    if style.protocol >= 5:  # numpy hands protocol 5 its buffer directly
        array = {(f"{core}.numeric", "_frombuffer")}
    else:
        array = {(f"{core}.multiarray", "_reconstruct"), ("numpy", "ndarray")}
    # Python 3 has no bytes opcodes before protocol 3; Python 2 wrote bytes as strings.
    latin1 = {("_codecs", "encode")} if style.protocol <= 2 and not style.python2 else set()
    return {("numpy", "dtype"), *array, *latin1}


@pytest.mark.parametrize("style", PICKLE_STYLES, ids=repr)
def test_official_archive_round_trips_at_every_pickle_protocol(tmp_path, style):
    path = archives.write_official_archive(
        tmp_path / "cifar.tar.gz",
        python2_pickles=style.python2, protocol=style.protocol, numpy1_names=style.numpy1_names,
    )
    with tarfile.open(path) as tar:  # the case covers what it claims to
        batch = tar.extractfile("cifar-10-batches-py/data_batch_1").read()
    assert archives.globals_named(batch) == globals_each_writer_names(style)
    assert batch.startswith(pickle.PROTO + bytes([style.protocol])) == (style.protocol >= 2)

    arrays = archive.read_archive(path)

    assert arrays.class_names == archives.CLASS_NAMES
    assert_same_arrays(arrays, *archives.official_images())


@pytest.mark.parametrize(
    "batch",
    [
        [b"a list", b"not a dict"],
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": 5},
        {b"data": [[1, 2], [3]], b"labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", b"dog"]},
        {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
    ],
    ids=["not-a-dict", "scalar-labels", "ragged-data", "text-labels", "float-data"],
)
def test_batch_with_malformed_fields_is_refused_as_corrupt(tmp_path, batch):
    # A later member of the same name replaces the valid one, as tar extraction would.
    replacement = archives.file_member("cifar-10-batches-py/data_batch_2", pickle.dumps(batch, protocol=2))
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz", extra_members=[replacement])
    message = refusal(path)
    assert "data_batch_2" in message and "corrupt" in message


def test_official_meta_without_ten_label_names_is_refused(tmp_path):
    nine = {b"label_names": [name.encode() for name in archives.CLASS_NAMES[:9]]}
    replacement = archives.file_member("cifar-10-batches-py/batches.meta", pickle.dumps(nine, protocol=2))
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz", extra_members=[replacement])
    message = refusal(path)
    assert "batches.meta" in message and "has 9 names" in message


# --- image-folder archive ------------------------------------------------------


@pytest.mark.parametrize("top_folder", [None, "cifar10"])
def test_png_image_folder_round_trips_exactly(tmp_path, top_folder):
    prefix = f"{top_folder}/" if top_folder else ""
    not_data = [  # what macOS tar and directory entries add; none of it is an image
        archives.special_member(f"{prefix}train", tarfile.DIRTYPE),
        archives.file_member(f"{prefix}train/cat/._0000.png", b"AppleDouble resource fork"),
        archives.file_member(f"{prefix}test/.DS_Store", b"Finder metadata"),
    ]
    path = archives.write_image_folder_archive(
        tmp_path / "folders.tar.gz", fmt="png", top_folder=top_folder, extra_members=not_data
    )

    arrays = archive.read_archive(path)

    assert arrays.class_names == archives.CLASS_NAMES
    assert_same_arrays(arrays, *archives.image_folder_images())


def test_jpeg_image_folder_decodes_with_right_shapes_and_labels(tmp_path):
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", fmt="jpg")

    arrays = archive.read_archive(path)

    train_images, train_labels, test_images, test_labels = archives.image_folder_images()
    assert arrays.train_images.shape == train_images.shape and arrays.train_images.dtype == np.uint8
    assert arrays.test_images.shape == test_images.shape
    np.testing.assert_array_equal(arrays.train_labels, train_labels)
    np.testing.assert_array_equal(arrays.test_labels, test_labels)
    # JPEG is lossy, but each image's mean colour (what encodes its class) survives.
    decoded_means = arrays.train_images.mean(axis=(2, 3))
    np.testing.assert_allclose(decoded_means, train_images.mean(axis=(2, 3)), atol=3)


def test_image_folder_with_different_train_and_test_classes_is_refused(tmp_path):
    stray = archives.file_member("train/zebra/0000.png", archives.encode_image(np.zeros((3, 32, 32), np.uint8)))
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", extra_members=[stray])
    with pytest.raises(ArchiveError, match="only in train: zebra"):
        archive.read_archive(path)


def test_image_of_wrong_size_is_refused_naming_member_and_size(tmp_path):
    too_big = archives.file_member("test/cat/9999.png", archives.encode_image(np.zeros((3, 40, 36), np.uint8)))
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", extra_members=[too_big])
    with pytest.raises(ArchiveError, match=r"'test/cat/9999.png' is 36x40 pixels"):
        archive.read_archive(path)


def test_unreadable_image_is_refused_naming_it(tmp_path):
    broken = archives.file_member("test/cat/9999.png", b"\x89PNG\r\n\x1a\n but then nothing of a PNG")
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", extra_members=[broken])
    assert "'test/cat/9999.png' is not a readable PNG or JPEG" in refusal(path)


@pytest.mark.parametrize(
    "class_names, expected_fragments",
    [
        (archives.CLASS_NAMES[:9], ["not CIFAR-10's 10 classes: missing truck."]),
        (("airplain", *archives.CLASS_NAMES[1:]), ["missing airplane; unexpected airplain"]),
        (("0", "1", "2", "3", "5", "6", "7", "8", "9", "10"), ["missing 4; unexpected 10"]),
        (("un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"), ["9 classes instead of 10"]),
    ],
    ids=["nine-official", "misspelled", "numbered-with-gap", "nine-unfamiliar"],
)
def test_image_folder_without_the_ten_classes_is_refused_naming_what_is_missing(
    tmp_path, monkeypatch, class_names, expected_fragments
):
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", class_names=class_names)
    forbid_reading_members(monkeypatch)  # refused from the names alone
    message = refusal(path)
    for fragment in expected_fragments:
        assert fragment in message


def test_numbered_class_folders_0_to_9_are_read_as_labels(tmp_path):
    numbers = tuple(str(label) for label in range(10))
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", class_names=numbers)

    arrays = archive.read_archive(path)

    assert arrays.class_names == numbers
    assert_same_arrays(arrays, *archives.image_folder_images())


def test_message_naming_a_member_with_a_newline_stays_one_line(tmp_path):
    odd = archives.file_member("train/ze\nbra/0000.png", archives.encode_image(np.zeros((3, 32, 32), np.uint8)))
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", extra_members=[odd])
    assert "only in train: ze\\nbra" in refusal(path)  # refusal() checks it is one line


def test_archive_of_neither_layout_says_what_was_expected(tmp_path):
    path = archives._write_tar(tmp_path / "other.tar.gz", [archives.file_member("notes/readme.txt", b"hi")])
    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(path)
    message = str(refused.value)
    assert "cifar-10-batches-py/data_batch_1" in message
    assert "train/<class>/<image>" in message
    assert "notes/readme.txt" in message


# --- caps on sizes and counts ------------------------------------------------------


def test_member_claiming_gigabytes_is_refused_from_its_header_alone(tmp_path, monkeypatch):
    claimed = 3 << 29  # 1.5 GiB of zeros, really there: ~1.7 MB gzipped
    name = "cifar-10-batches-py/test_batch"  # a batch, so a reader without caps would read it all
    path = archives.write_archive_with_huge_member(tmp_path / "huge.tar.gz", name, claimed)
    assert path.stat().st_size < 4 << 20
    with tarfile.open(path) as tar:  # stops at the header, so this is quick
        assert next(member for member in tar if member.name == name).size == claimed

    headers_read = record_headers_read(monkeypatch)
    forbid_reading_members(monkeypatch)
    message, peak_bytes = refusal_and_peak_memory(path)

    assert f"'{name}' claims {claimed:,} bytes" in message and "official archive" in message
    # No header was read after the huge one: its data was not even skipped over.
    assert headers_read[-1].name == name
    assert peak_bytes < 16 << 20


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "gnu-longname"])
def test_oversized_header_extension_is_refused_before_tarfile_reads_it(tmp_path, kind):
    claimed = 3 << 29  # tarfile itself would read all of it into memory
    path = archives.write_archive_with_huge_member(tmp_path / "huge.tar.gz", "././@LongLink", claimed, kind=kind)
    message, peak_bytes = refusal_and_peak_memory(path)
    assert "tar header extension" in message and f"{claimed:,} bytes" in message
    assert peak_bytes < 16 << 20


def test_oversized_image_is_refused_before_any_image_is_decoded(tmp_path, monkeypatch):
    padded = archives.file_member("train/cat/9999.png", bytes(archive.MAX_IMAGE_BYTES + 1))
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", extra_members=[padded])
    forbid_reading_members(monkeypatch)
    message = refusal(path)
    assert f"'train/cat/9999.png' claims {archive.MAX_IMAGE_BYTES + 1:,} bytes" in message
    assert "32x32" in message


def test_archive_with_too_many_members_is_refused_as_soon_as_it_has_one_more(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBERS", 12)  # 60,000 would take a minute to write
    padding = [archives.file_member(f"cifar-10-batches-py/extra_{number}", b"") for number in range(10)]
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz", extra_members=padding)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    headers_read = record_headers_read(monkeypatch)
    forbid_reading_members(monkeypatch)
    assert "more than 12 members" in refusal(path)
    assert headers_read[-1].name == names[12]  # no header read after the first one too many


def test_archive_whose_members_add_up_past_the_cap_is_refused(tmp_path, monkeypatch):
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz")
    with tarfile.open(path) as tar:
        unpacked = sum(member.size for member in tar)
    monkeypatch.setattr(archive, "MAX_UNPACKED_BYTES", unpacked - 1)
    forbid_reading_members(monkeypatch)
    assert "add up to more than" in refusal(path)


@pytest.mark.parametrize("pixel", [0x00, 0xFF], ids=["black", "white"])
@pytest.mark.parametrize("style", [style for style in PICKLE_STYLES if not style.numpy1_names or style.python2], ids=repr)
def test_caps_admit_a_full_size_official_archive_in_any_pickle_style(style, pixel):
    # The worst pixels: 0x00 for protocol 0 (escaped, up to 6 characters a byte),
    # 0xFF for Python 3's protocols 1-2 (UTF-8, 2 bytes). Pickle size grows
    # linearly, so a tenth of a batch tells the size of a whole one.
    tenth = 1_000
    pickled = archives.batch_pickle(np.full((tenth, 3, 32, 32), pixel, np.uint8), np.full(tenth, 9), style)
    full_batch_bytes = 10 * len(pickled)
    assert full_batch_bytes <= archive.MAX_MEMBER_BYTES
    assert len(archive.OFFICIAL_MEMBERS) * full_batch_bytes <= archive.MAX_UNPACKED_BYTES


def test_caps_admit_a_full_image_folder_archive_packed_on_macos():
    noise = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32), dtype=np.uint8)  # incompressible
    largest_image = max(len(archives.encode_image(noise, fmt)) for fmt in ("png", "jpg"))
    assert largest_image <= archive.MAX_IMAGE_BYTES
    folders = 1 + len(cifar_arrays.SPLITS) * (1 + len(archive.CIFAR10_CLASSES))  # top, splits, class folders
    # macOS tar adds a ._ resource-fork file next to every file and folder.
    assert 2 * (60_000 + folders) <= archive.MAX_MEMBERS


# --- checksums and missing files -------------------------------------------------


def test_md5_mismatch_is_refused_before_the_archive_is_opened(tmp_path, monkeypatch):
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz")
    actual = hashlib.md5(path.read_bytes()).hexdigest()

    def open_must_not_be_called(*args, **kwargs):
        raise AssertionError("tarfile.open called although the md5 did not match")

    monkeypatch.setattr(tarfile, "open", open_must_not_be_called)
    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(path, expected_md5="0" * 32)
    message = str(refused.value)
    assert actual in message and "0" * 32 in message and "data.archive_md5" in message


@pytest.mark.parametrize("skip", ["", None])
def test_empty_md5_skips_the_check(tmp_path, skip):
    path = tmp_path / "anything.bin"
    path.write_bytes(b"payload")
    download.verify_md5(path, skip)  # must not raise
    assert download.md5_of(path) == hashlib.md5(b"payload").hexdigest()


def test_missing_archive_error_names_the_path_and_data_archive(tmp_path):
    missing = tmp_path / "nowhere" / "cifar.tar.gz"
    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(missing)
    assert str(missing) in str(refused.value) and "data.archive" in str(refused.value)


# --- hostile archives -------------------------------------------------------------


def fifo_archive(path):
    return archives.write_official_archive(
        path, extra_members=[archives.special_member("cifar-10-batches-py/pipe", tarfile.FIFOTYPE)]
    )


@pytest.mark.parametrize(
    "build, member_fragment",
    [
        (archives.write_traversal_archive, "../../escaped-by-traversal.txt"),
        (archives.write_absolute_archive, "escaped-by-absolute-path.txt"),
        (archives.write_link_archive, "passwd-link"),
        (lambda path: archives.write_link_archive(path, kind=tarfile.LNKTYPE), "passwd-link"),
        (fifo_archive, "cifar-10-batches-py/pipe"),
    ],
    ids=["traversal", "absolute", "symlink", "hardlink", "fifo"],
)
def test_unsafe_member_is_refused_before_any_member_is_read(tmp_path, monkeypatch, build, member_fragment):
    path = build(tmp_path / "archives" / "hostile.tar.gz")
    # Run from deep inside tmp_path so anything a careless reader extracted,
    # relative or absolute, would land in the listing compared below.
    workdir = tmp_path / "work" / "deep"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    before = tree_listing(tmp_path)

    # The hostile member is stored last: refusing it with no member read yet
    # shows that every member is checked before reading starts.
    def extractfile_must_not_be_called(*args, **kwargs):
        raise AssertionError("a member was read before all members were checked")

    monkeypatch.setattr(tarfile.TarFile, "extractfile", extractfile_must_not_be_called)
    with pytest.raises(ArchiveError, match="corrupt or malicious") as refused:
        archive.read_archive(path)
    assert member_fragment in str(refused.value)
    assert tree_listing(tmp_path) == before


def test_malicious_pickle_is_refused_without_running_its_payload(tmp_path):
    path = archives.write_malicious_pickle_archive(tmp_path / "malicious.tar.gz")
    before = tree_listing(tmp_path)

    with pytest.raises(ArchiveError) as refused:
        archive.read_archive(path)

    message = str(refused.value)
    assert "data_batch_1" in message
    assert "system" in message and "which a CIFAR batch never needs" in message
    assert not archives.malicious_marker(path).exists()
    assert tree_listing(tmp_path) == before


def named(dotted: str) -> archives.NamedGlobal:
    module, _, name = dotted.rpartition(".")
    return archives.NamedGlobal(module, name)


# Each builds, from a shell command, a payload that an ordinary unpickler would
# run; the fragment is what the refusal must name.
HOSTILE_PAYLOADS = {
    "os.system": lambda command: archives.Call(named("os.system"), command),
    "posix.system": lambda command: archives.Call(named("posix.system"), command),
    "builtins.eval": lambda command: archives.Call(named("builtins.eval"), f"__import__('os').system({command!r})"),
    "__builtin__.eval": lambda command: archives.Call(named("__builtin__.eval"), f"__import__('os').system({command!r})"),
    "subprocess.Popen": lambda command: archives.Call(named("subprocess.Popen"), ["sh", "-c", command]),
    "builtins.getattr": lambda command: archives.Call(
        archives.Call(named("builtins.getattr"), archives.Call(named("builtins.__import__"), "os"), "system"), command
    ),
    "numpy.load": lambda command: archives.Call(named("numpy.load"), "payload.npy", True),
    "numpy.testing._private.utils.runstring": lambda command: archives.Call(
        named("numpy.testing._private.utils.runstring"), f"import os; os.system({command!r})", {}
    ),
    "copy_reg._reconstructor": lambda command: archives.Call(
        named("copy_reg._reconstructor"), named("numpy.dtype"), named("numpy.dtype"), "u1"
    ),
    # Permitted globals, called as numpy never calls them:
    "_codecs.encode": lambda command: archives.Call(named("_codecs.encode"), command.encode(), "zlib_codec"),
    "numpy.ndarray": lambda command: archives.Call(named("numpy.ndarray"), (1 << 40,)),
    "numpy's _reconstruct": lambda command: archives.Call(
        named("numpy._core.multiarray._reconstruct"), named("numpy.ndarray"), (1 << 40,), b"b"
    ),
}


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("fragment", list(HOSTILE_PAYLOADS))
def test_hostile_pickle_is_refused_at_any_protocol_without_running(tmp_path, fragment, protocol):
    path = tmp_path / "hostile.tar.gz"
    payload = HOSTILE_PAYLOADS[fragment](archives.command_creating_marker(path))
    archives.write_hostile_pickle_archive(path, payload, archives.PickleStyle(python2=False, protocol=protocol))
    before = tree_listing(tmp_path)

    message = refusal(path)

    assert "'cifar-10-batches-py/data_batch_1' " in message
    assert fragment in message and "which a CIFAR batch never needs" in message
    assert not archives.malicious_marker(path).exists()
    assert tree_listing(tmp_path) == before


# --- download ------------------------------------------------------------------------


def test_download_from_file_url_writes_verified_copy(tmp_path, capsys):
    source = archives.write_official_archive(tmp_path / "source" / "cifar.tar.gz")
    destination = tmp_path / "cache" / "cifar.tar.gz"

    result = download.download(source.as_uri(), destination, download.md5_of(source))

    assert result == destination
    assert destination.read_bytes() == source.read_bytes()
    assert tree_listing(destination.parent) == {"cifar.tar.gz"}  # no partial file left behind
    assert "cifar.tar.gz" in capsys.readouterr().err  # the progress bar was drawn


def test_download_with_wrong_md5_is_refused_and_leaves_nothing(tmp_path):
    source = archives.write_official_archive(tmp_path / "source" / "cifar.tar.gz")
    destination = tmp_path / "cache" / "cifar.tar.gz"
    with pytest.raises(ArchiveError, match="0{32} was expected"):
        download.download(source.as_uri(), destination, "0" * 32)
    assert tree_listing(destination.parent) == set()


def test_download_failure_tells_the_user_to_set_data_archive(tmp_path, monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)  # a proxy would answer for 127.0.0.1
    destination = tmp_path / "cifar.tar.gz"
    with pytest.raises(ArchiveError) as refused:
        download.download("http://127.0.0.1:9/x", destination, download.OFFICIAL_MD5)
    message = str(refused.value)
    assert "http://127.0.0.1:9/x" in message
    assert "dvc exp run -S data.archive=" in message and "data.archive_md5" in message
    assert tree_listing(tmp_path) == set()


# --- .npz cache --------------------------------------------------------------------


def test_saved_arrays_load_back_identically(tmp_path):
    original = archive.read_archive(archives.write_official_archive(tmp_path / "cifar.tar.gz"))
    path = tmp_path / "prepared" / "cifar10"  # no .npz suffix: must still be written exactly here

    cifar_arrays.save_arrays(original, path)
    loaded = cifar_arrays.load_arrays(path)

    assert tree_listing(path.parent) == {"cifar10"}
    assert loaded.class_names == original.class_names
    assert_same_arrays(
        loaded, original.train_images, original.train_labels, original.test_images, original.test_labels
    )


def test_loading_missing_arrays_says_to_run_the_download_stage(tmp_path):
    with pytest.raises(InputError, match="dvc repro -f -s download"):
        cifar_arrays.load_arrays(tmp_path / "cifar10.npz")


@pytest.mark.parametrize("field, damage, words", [
    ("train_labels", lambda labels: labels.astype(str), "train labels are <U21, not integers"),
    ("test_labels", lambda labels: labels + 10, "test labels span 10..19, outside 0..9"),
    ("train_images", lambda images: images.astype(np.float32), "train images are float32"),
])
def test_a_damaged_npz_cache_names_how_to_get_it_back(tmp_path, field, damage, words):
    arrays = archive.read_archive(archives.write_official_archive(tmp_path / "cifar.tar.gz"))
    path = tmp_path / "cifar10.npz"
    cifar_arrays.save_arrays(arrays, path)
    saved = dict(np.load(path))
    saved[field] = damage(saved[field])
    np.savez(path.with_suffix(""), **saved)   # numpy appends .npz
    with pytest.raises(ArchiveError) as error:
        cifar_arrays.load_arrays(path)
    message = str(error.value)
    assert words in message and f"dvc checkout --force {path}" in message and "dvc repro -f -s download" in message, message
    assert "official archive" not in message   # the cache comes back from DVC, not from a rebuilt archive
