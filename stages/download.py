"""download: the CIFAR-10 archive (official, or a local one named by data.archive) -> data/raw/cifar10.npz,
and where the images came from -> data/raw/source.json"""
from pathlib import Path

from robust_cifar.cache import cache_dir
from robust_cifar.data.archive import read_archive
from robust_cifar.data.arrays import save_arrays
from robust_cifar.data.download import OFFICIAL_MD5, DataConfig, download, md5_of, require_md5
from robust_cifar.outputs import write_json
from robust_cifar.params import load_params
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    paths.no_arguments(argv)
    data = DataConfig.from_params(load_params())
    if data.archive:
        archive, expected_md5 = Path(data.archive), data.archive_md5
        require_md5(archive, expected_md5)   # read_archive checks the rest
    else:
        archive, expected_md5 = cache_dir("downloads") / Path(data.url).name, data.md5
        if not (archive.is_file() and (not expected_md5 or md5_of(archive) == expected_md5)):
            download(data.url, archive, expected_md5)
    arrays = read_archive(archive, expected_md5)
    save_arrays(arrays, paths.RAW)
    md5 = md5_of(archive)
    official = md5 == OFFICIAL_MD5
    write_json(paths.SOURCE, {
        "archive": data.archive or data.url, "md5": md5, "official": official,
        "description": "the official CIFAR-10 python archive" if official else
        "not the official archive (for example the JPEG re-encoding): accuracies are close to, not equal to, "
        "those on the official images",
        "train_images": int(len(arrays.train_labels)), "test_images": int(len(arrays.test_labels))})
    print(f"{archive}: {len(arrays.train_labels)} training and {len(arrays.test_labels)} test images, "
          f"classes {', '.join(arrays.class_names)} -> {paths.RAW}")


if __name__ == "__main__":
    run_stage(main)
