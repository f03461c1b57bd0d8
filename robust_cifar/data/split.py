"""The stratified train / validation split of the official training set, and loading the three splits."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from robust_cifar.data.arrays import CifarArrays, load_arrays
from robust_cifar.conditions import SPLITS
from robust_cifar.errors import InputError, ParamsError
from robust_cifar.npz import load_npz, save_npz
from robust_cifar.params import OPEN_FRACTION, Params, whole
from robust_cifar.schema import Array, array_problem, refuse


PER_CLASS = whole(lambda v: 0 <= v <= 100_000, "0 (all of them) or a whole number of images per class up to 100,000")


@dataclass(frozen=True)
class SplitConfig:
    train_fraction: float   # of each class of the official training set
    val_per_class: int      # validation images per class from the rest (0 = all the rest)
    test_per_class: int     # test images per class from the official test set (0 = all)

    @classmethod
    def from_params(cls, params: Params) -> "SplitConfig":
        return cls(train_fraction=params.value("split.train_fraction", OPEN_FRACTION),
                   val_per_class=params.value("split.val_per_class", PER_CLASS),
                   test_per_class=params.value("split.test_per_class", PER_CLASS))


def stratified_split(labels: np.ndarray, train_fraction: float, seed: int,
                     val_per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded random round(fraction * count) go to train and the rest (or `val_per_class`
    of the rest) to validation.

    Returns sorted index arrays, so the split is a set (its order carries no randomness).
    """
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_train = int(round(train_fraction * len(members)))
        if n_train == 0 or n_train == len(members):
            raise ParamsError(f"`split.train_fraction` = {train_fraction} leaves class {label} ({len(members)} images) "
                              "with an empty train or validation part: choose a fraction further from 0 and 1")
        if val_per_class > len(members) - n_train:
            raise ParamsError(f"`split.val_per_class` = {val_per_class} is more than the {len(members) - n_train} "
                              f"images class {label} has left after training: choose at most that, or 0 for all")
        chosen = rng.permutation(members)
        train_parts.append(chosen[:n_train])
        val_parts.append(chosen[n_train:n_train + val_per_class] if val_per_class else chosen[n_train:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def stratified_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` seeded random images of every class (all of them for 0)."""
    if per_class == 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if per_class > len(members):
            raise ParamsError(f"`split.test_per_class` = {per_class} is more than the {len(members)} test images of "
                              f"class {label}: choose at most that, or 0 for all")
        parts.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(parts))


RAW = "raw"   # the split's key for the fingerprint of the data it indexes


def fingerprint(arrays: CifarArrays) -> np.ndarray:
    """16 bytes that tell one data set (both sets' images and labels, in their order) from another: a split's
    indices mean nothing for another archive's images, and within range they are read without a word. About
    0.3 s for CIFAR-10's 180 MB."""
    digest = hashlib.blake2b(digest_size=16)
    for images, labels in ((arrays.train_images, arrays.train_labels), (arrays.test_images, arrays.test_labels)):
        digest.update(np.int64(len(labels)).tobytes() + np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(images).data)
    return np.frombuffer(digest.digest(), dtype=np.uint8)


def save_split(train_indices: np.ndarray, val_indices: np.ndarray, test_indices: np.ndarray, raw: np.ndarray,
               path: str | Path) -> None:
    """The three index sets, and `raw`: the fingerprint of the data they were drawn from."""
    save_npz(path, {"train": train_indices.astype(np.int64), "val": val_indices.astype(np.int64),
                    "test": test_indices.astype(np.int64), RAW: raw})


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray   # uint8 (N, 3, 32, 32)
    labels: np.ndarray   # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


# train and val index the official training set, test the official test set
INDEXED = {"train": "training set", "val": "training set", "test": "test set"}


def split_problem(indices: Mapping[str, np.ndarray], sizes: Mapping[str, int] | None = None) -> str | None:
    """What keeps `indices` from being what save_split writes, in a few words; None when they are: per split a
    sorted set of image indices (no repeats), train and val disjoint, each below its set's size in `sizes`
    ({"training set": n, "test set": m}) where known."""
    problem = array_problem(indices, {name: Array("iu", (f"{name} images",)) for name in SPLITS})
    if problem:
        return problem
    for name in SPLITS:
        index = indices[name]
        if np.any(np.diff(index) <= 0):
            return f"{name} is not a sorted set of indices (a repeat, or out of order)"
        if index[0] < 0 or (sizes is not None and index[-1] >= sizes[INDEXED[name]]):
            limit = f"0..{sizes[INDEXED[name]] - 1}" if sizes is not None else "0 and up"
            return f"{name} holds indices outside {limit} (the official {INDEXED[name]})"
    shared = np.intersect1d(indices["train"], indices["val"]).size
    return f"train and val share {shared:,} images" if shared else None


def load_split_indices(split_path: str | Path, sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """The split's train / val / test indices, checked (split_problem); a one-line InputError otherwise."""
    indices = load_npz(split_path, produced_by="split")
    problem = split_problem(indices, sizes)
    if problem:
        raise refuse(split_path, "split", problem)
    return indices


def load_splits(raw_path: str | Path, split_path: str | Path) -> tuple[dict[str, LabelledImages], tuple[str, ...]]:
    """train / val / test images and labels, and the class names; a split drawn from other data is refused."""
    arrays = load_arrays(raw_path)
    indices = load_split_indices(split_path, {"training set": len(arrays.train_labels),
                                              "test set": len(arrays.test_labels)})
    if RAW not in indices:
        raise refuse(split_path, "split", f"no record of the data it indexes, {raw_path}")
    if not np.array_equal(indices[RAW], fingerprint(arrays)):   # which of the two is foreign, no file can tell
        raise InputError(f"{split_path} was drawn from other data than {raw_path} holds now: put both back as DVC "
                         f"recorded them (`dvc checkout --force {raw_path} {split_path}`); only if {raw_path} is the "
                         "data you mean, draw the split from it (`dvc repro -f -s split`)")
    train, val, test = indices["train"], indices["val"], indices["test"]
    splits = {
        "train": LabelledImages(arrays.train_images[train], arrays.train_labels[train]),
        "val": LabelledImages(arrays.train_images[val], arrays.train_labels[val]),
        "test": LabelledImages(arrays.test_images[test], arrays.test_labels[test]),
    }
    return splits, arrays.class_names
