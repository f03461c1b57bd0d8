"""Reading CIFAR-10 archives: both layouts, checksums, hostile archives, download, .npz cache."""

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest

from robust_cifar import data
from robust_cifar.data import ArchiveError, CifarArrays
from robust_cifar.errors import InputError
from tests import archives


def tree_listing(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


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

    arrays = data.read_archive(path, expected_md5=md5.upper())  # md5 case should not matter

    assert arrays.train_images.shape == (40, 3, 32, 32)
    assert arrays.test_images.shape == (20, 3, 32, 32)
    assert np.bincount(arrays.train_labels).tolist() == [4] * 10
    assert np.bincount(arrays.test_labels).tolist() == [2] * 10
    assert arrays.class_names == archives.CLASS_NAMES
    assert_same_arrays(arrays, *archives.official_images(train_per_class=4, test_per_class=2))


def test_plain_uncompressed_tar_is_read_too(tmp_path):
    arrays = data.read_archive(archives.write_official_archive(tmp_path / "cifar.tar"))
    assert_same_arrays(arrays, *archives.official_images())


def test_incomplete_official_archive_names_the_missing_batches(tmp_path):
    only_one_batch = archives.file_member("cifar-10-batches-py/data_batch_1", b"not read")
    path = archives._write_tar(tmp_path / "partial.tar.gz", [only_one_batch])
    with pytest.raises(ArchiveError, match="lacks data_batch_2, data_batch_3.*test_batch, batches.meta"):
        data.read_archive(path)


def test_truncated_archive_is_refused_as_unreadable(tmp_path):
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="truncated"):
        data.read_archive(path)  # no md5 given, so only the reader itself can notice


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

    arrays = data.read_archive(path)

    assert arrays.class_names == archives.CLASS_NAMES
    assert_same_arrays(arrays, *archives.image_folder_images())


def test_jpeg_image_folder_decodes_with_right_shapes_and_labels(tmp_path):
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", fmt="jpg")

    arrays = data.read_archive(path)

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
        data.read_archive(path)


def test_image_of_wrong_size_is_refused_naming_member_and_size(tmp_path):
    too_big = archives.file_member("test/cat/9999.png", archives.encode_image(np.zeros((3, 40, 36), np.uint8)))
    path = archives.write_image_folder_archive(tmp_path / "folders.tar.gz", extra_members=[too_big])
    with pytest.raises(ArchiveError, match=r"'test/cat/9999.png' is 36x40 pixels"):
        data.read_archive(path)


def test_archive_of_neither_layout_says_what_was_expected(tmp_path):
    path = archives._write_tar(tmp_path / "other.tar.gz", [archives.file_member("notes/readme.txt", b"hi")])
    with pytest.raises(ArchiveError) as refused:
        data.read_archive(path)
    message = str(refused.value)
    assert "cifar-10-batches-py/data_batch_1" in message
    assert "train/<class>/<image>" in message
    assert "notes/readme.txt" in message


# --- checksums and missing files -------------------------------------------------


def test_md5_mismatch_is_refused_before_the_archive_is_opened(tmp_path, monkeypatch):
    path = archives.write_official_archive(tmp_path / "cifar.tar.gz")
    actual = hashlib.md5(path.read_bytes()).hexdigest()

    def open_must_not_be_called(*args, **kwargs):
        raise AssertionError("tarfile.open called although the md5 did not match")

    monkeypatch.setattr(tarfile, "open", open_must_not_be_called)
    with pytest.raises(ArchiveError) as refused:
        data.read_archive(path, expected_md5="0" * 32)
    message = str(refused.value)
    assert actual in message and "0" * 32 in message and "data.archive_md5" in message


@pytest.mark.parametrize("skip", ["", None])
def test_empty_md5_skips_the_check(tmp_path, skip):
    path = tmp_path / "anything.bin"
    path.write_bytes(b"payload")
    data.verify_md5(path, skip)  # must not raise
    assert data.md5_of(path) == hashlib.md5(b"payload").hexdigest()


def test_missing_archive_error_names_the_path_and_data_archive(tmp_path):
    missing = tmp_path / "nowhere" / "cifar.tar.gz"
    with pytest.raises(ArchiveError) as refused:
        data.read_archive(missing)
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
        data.read_archive(path)
    assert member_fragment in str(refused.value)
    assert tree_listing(tmp_path) == before


def test_malicious_pickle_is_refused_without_running_its_payload(tmp_path):
    path = archives.write_malicious_pickle_archive(tmp_path / "malicious.tar.gz")
    before = tree_listing(tmp_path)

    with pytest.raises(ArchiveError) as refused:
        data.read_archive(path)

    message = str(refused.value)
    assert "data_batch_1" in message
    assert "system" in message and "which a CIFAR batch never needs" in message
    assert not archives.malicious_marker(path).exists()
    assert tree_listing(tmp_path) == before


# --- download ------------------------------------------------------------------------


def test_download_from_file_url_writes_verified_copy(tmp_path, capsys):
    source = archives.write_official_archive(tmp_path / "source" / "cifar.tar.gz")
    destination = tmp_path / "cache" / "cifar.tar.gz"

    result = data.download(source.as_uri(), destination, data.md5_of(source))

    assert result == destination
    assert destination.read_bytes() == source.read_bytes()
    assert tree_listing(destination.parent) == {"cifar.tar.gz"}  # no partial file left behind
    assert "cifar.tar.gz" in capsys.readouterr().err  # the progress bar was drawn


def test_download_with_wrong_md5_is_refused_and_leaves_nothing(tmp_path):
    source = archives.write_official_archive(tmp_path / "source" / "cifar.tar.gz")
    destination = tmp_path / "cache" / "cifar.tar.gz"
    with pytest.raises(ArchiveError, match="0{32} was expected"):
        data.download(source.as_uri(), destination, "0" * 32)
    assert tree_listing(destination.parent) == set()


def test_download_failure_tells_the_user_to_set_data_archive(tmp_path, monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)  # a proxy would answer for 127.0.0.1
    destination = tmp_path / "cifar.tar.gz"
    with pytest.raises(ArchiveError) as refused:
        data.download("http://127.0.0.1:9/x", destination, data.OFFICIAL_MD5)
    message = str(refused.value)
    assert "http://127.0.0.1:9/x" in message
    assert "dvc exp run -S data.archive=" in message and "data.archive_md5" in message
    assert tree_listing(tmp_path) == set()


# --- .npz cache --------------------------------------------------------------------


def test_saved_arrays_load_back_identically(tmp_path):
    original = data.read_archive(archives.write_official_archive(tmp_path / "cifar.tar.gz"))
    path = tmp_path / "prepared" / "cifar10"  # no .npz suffix: must still be written exactly here

    data.save_arrays(original, path)
    loaded = data.load_arrays(path)

    assert tree_listing(path.parent) == {"cifar10"}
    assert loaded.class_names == original.class_names
    assert_same_arrays(
        loaded, original.train_images, original.train_labels, original.test_images, original.test_labels
    )


def test_loading_missing_arrays_says_to_run_the_download_stage(tmp_path):
    with pytest.raises(InputError, match="dvc repro -f download"):
        data.load_arrays(tmp_path / "cifar10.npz")
