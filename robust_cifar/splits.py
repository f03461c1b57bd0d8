"""The stratified train / validation split of the official training set, and loading the three splits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust_cifar.data import load_arrays
from robust_cifar.errors import InputError, ParamsError
from robust_cifar.npz import load_npz, save_npz
from robust_cifar.params import OPEN_FRACTION, Params



def train_fraction(params: Params) -> float:
    return params.value("split.train_fraction", OPEN_FRACTION)


def stratified_split(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded random round(fraction * count) go to train and the rest to validation.

    Returns sorted index arrays, so the split is a set (its order carries no randomness).
    """
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_train = int(round(train_fraction * len(members)))
        if n_train == 0 or n_train == len(members):
            raise ParamsError(f"split.train_fraction = {train_fraction} leaves class {label} ({len(members)} images) "
                             "with an empty train or validation part; choose a fraction further from 0 and 1")
        chosen = rng.permutation(members)
        train_parts.append(chosen[:n_train])
        val_parts.append(chosen[n_train:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def save_split(train_indices: np.ndarray, val_indices: np.ndarray, path: str | Path) -> None:
    save_npz(path, {"train": train_indices.astype(np.int64), "val": val_indices.astype(np.int64)})


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray   # uint8 (N, 3, 32, 32)
    labels: np.ndarray   # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


def load_splits(raw_path: str | Path, split_path: str | Path) -> tuple[dict[str, LabelledImages], tuple[str, ...]]:
    """train / val / test images and labels, and the class names."""
    arrays = load_arrays(raw_path)
    indices = load_npz(split_path, produced_by="split")
    if set(indices) != {"train", "val"} or any(
            index.dtype.kind not in "iu" or index.ndim != 1 or len(index) == 0
            or index.min() < 0 or index.max() >= len(arrays.train_labels) for index in indices.values()):
        raise InputError(f"{split_path} does not hold train and validation indices into {raw_path}: "
                         "run `dvc repro -f split`")
    train, val = indices["train"], indices["val"]
    splits = {
        "train": LabelledImages(arrays.train_images[train], arrays.train_labels[train]),
        "val": LabelledImages(arrays.train_images[val], arrays.train_labels[val]),
        "test": LabelledImages(arrays.test_images, arrays.test_labels),
    }
    return splits, arrays.class_names
