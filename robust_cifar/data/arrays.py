"""CIFAR-10 as the arrays every stage reads: their type, their checks, and their .npz (the download stage's
output, `data/raw/cifar10.npz`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robust_cifar.errors import ArchiveError, get_back
from robust_cifar.npz import load_npz, save_npz

IMAGE_SHAPE = (3, 32, 32)
SPLITS = ("train", "test")
_NPZ_FIELDS = ("train_images", "train_labels", "test_images", "test_labels", "class_names")


# single truth value; identity semantics are what callers can actually use.
@dataclass(frozen=True, eq=False)
class CifarArrays:
    train_images: np.ndarray  # uint8 (N, 3, 32, 32), NCHW
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray  # uint8 (M, 3, 32, 32)
    test_labels: np.ndarray  # int64 (M,)
    class_names: tuple[str, ...]


def check_arrays(arrays: CifarArrays, source: str, fix: str) -> None:
    """Refuse arrays that are not a labelled image dataset; `fix`: how to get `source` back."""
    n_classes = len(arrays.class_names)
    for split in SPLITS:
        images = getattr(arrays, f"{split}_images")
        labels = getattr(arrays, f"{split}_labels")
        problem = None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            problem = f"{split} images are {images.dtype} {images.shape}, not uint8 (N, 3, 32, 32)"
        elif labels.dtype.kind not in "iu":
            problem = f"{split} labels are {labels.dtype}, not integers"
        elif labels.shape != (len(images),):
            problem = f"there are {len(images)} {split} images but {labels.shape} labels"
        elif len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            problem = (
                f"{split} labels span {labels.min()}..{labels.max()}, outside 0..{n_classes - 1} "
                f"for the {n_classes} class names"
            )
        elif len(images) == 0:
            problem = f"there are no {split} images"
        if problem:
            raise ArchiveError(f"{source} does not hold a valid CIFAR-10 dataset: {problem}. {fix[0].upper()}{fix[1:]}")


def save_arrays(arrays: CifarArrays, path) -> None:
    """Write ``arrays`` as one uncompressed, reproducible .npz at exactly ``path``."""
    save_npz(path, {
        "train_images": arrays.train_images,
        "train_labels": arrays.train_labels,
        "test_images": arrays.test_images,
        "test_labels": arrays.test_labels,
        "class_names": np.array(arrays.class_names, dtype=np.str_),
    })


def load_arrays(path) -> CifarArrays:
    saved = load_npz(path, produced_by="download")
    missing = {field for field in _NPZ_FIELDS if field not in saved}
    if missing:
        raise ArchiveError(
            f"{path} lacks {', '.join(sorted(missing))}; it was not written by "
            f"save_arrays or is damaged: {get_back(path, 'download')}"
        )
    arrays = CifarArrays(
        train_images=saved["train_images"],
        train_labels=saved["train_labels"],
        test_images=saved["test_images"],
        test_labels=saved["test_labels"],
        class_names=tuple(str(name) for name in saved["class_names"]),
    )
    check_arrays(arrays, source=str(path), fix=get_back(path, "download"))
    return arrays
