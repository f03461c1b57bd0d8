"""split: stratified, seeded train / validation split of the official training set, and the test images
used (all, or a stratified subset) -> data/split/indices.npz"""
import numpy as np

from robust_cifar.data.arrays import load_arrays
from robust_cifar.data.split import SplitConfig, fingerprint, save_split, stratified_split, stratified_subset
from robust_cifar.params import load_params
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    paths.no_arguments(argv)
    params = load_params()
    config, seed = SplitConfig.from_params(params), params.seed("split")
    arrays = load_arrays(paths.RAW)
    train, val = stratified_split(arrays.train_labels, config.train_fraction, seed, config.val_per_class)
    test = stratified_subset(arrays.test_labels, config.test_per_class, seed)
    save_split(train, val, test, fingerprint(arrays), paths.SPLIT)
    per_class = np.bincount(arrays.train_labels[train])
    print(f"train {len(train)} ({per_class.min()}-{per_class.max()} per class), validation {len(val)}, "
          f"test {len(test)} -> {paths.SPLIT}")


if __name__ == "__main__":
    run_stage(main)
