"""download: the CIFAR-10 archive (official, or a local one named by data.archive) -> data/raw/cifar10.npz"""
from pathlib import Path

from robust_cifar.data import DataConfig, download, md5_of, read_archive, save_arrays
from robust_cifar.params import load_params
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    data = DataConfig.from_params(load_params())
    if data.archive:
        archive, expected_md5 = Path(data.archive), data.archive_md5
    else:
        archive, expected_md5 = paths.DOWNLOADS / Path(data.url).name, data.md5
        if not (archive.is_file() and (not expected_md5 or md5_of(archive) == expected_md5)):
            download(data.url, archive, expected_md5)
    arrays = read_archive(archive, expected_md5)
    save_arrays(arrays, paths.RAW)
    print(f"{archive}: {len(arrays.train_labels)} training and {len(arrays.test_labels)} test images, "
          f"classes {', '.join(arrays.class_names)} -> {paths.RAW}")


if __name__ == "__main__":
    run_stage(main)
