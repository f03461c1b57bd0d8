"""split: stratified train / validation split of the official training set -> data/split/indices.npz"""
import numpy as np

from robust_cifar.data import load_arrays
from robust_cifar.params import load_params
from robust_cifar.splits import save_split, stratified_split, train_fraction
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    params = load_params()
    fraction, seed = train_fraction(params), params.seed("split")
    labels = load_arrays(paths.RAW).train_labels
    train, val = stratified_split(labels, fraction, seed)
    save_split(train, val, paths.SPLIT)
    per_class = np.bincount(labels[train])
    print(f"train {len(train)} ({per_class.min()}-{per_class.max()} per class), validation {len(val)} -> {paths.SPLIT}")


if __name__ == "__main__":
    run_stage(main)
