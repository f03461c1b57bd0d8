"""Reading the embeddings file that embed writes (data/embeddings/<run>.npz), checked against its schema.

Per split, `<split>.<condition>.embeddings` (and `.logits` for a model whose head decides: see
embed.flatten) for each of its conditions, and `<split>.labels`; `class_names` and `run` (the model's
`<method>-<seed>`) once. evaluate and umap_plot read it (robustness embeds its 3-NN's neighbours
itself, in fp32); numpy only, so the light stages stay light.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robust_cifar.conditions import SPLITS, conditions_for
from robust_cifar.npz import load_npz
from robust_cifar.schema import Array, check_arrays, refuse

CLASSES = "classes"
EMBEDDING = "embedding dimensions"


def images(split: str) -> str:
    return f"{split} images"


def schema(with_logits: bool) -> dict[str, Array]:
    """Every array of an embeddings file, in the order a mismatch is best named in (labels against rows)."""
    arrays = {"run": Array("U", ()), "class_names": Array("U", (CLASSES,))}
    for split in SPLITS:
        for condition in conditions_for(split):
            arrays[f"{split}.{condition}.embeddings"] = Array("f", (images(split), EMBEDDING))
            if with_logits:
                arrays[f"{split}.{condition}.logits"] = Array("f", (images(split), CLASSES))
        arrays[f"{split}.labels"] = Array("iu", (images(split),), below=CLASSES)
    return arrays


def stores_logits(arrays: dict[str, np.ndarray]) -> bool:
    """Logits are stored for every split and condition or for none: any of them means all are needed."""
    return any(key.endswith(".logits") for key in arrays)


def load_embeddings(path: str | Path, run: str, num_classes: int | None = None,
                    embedding_dim: int | None = None) -> dict[str, np.ndarray]:
    """Every array of the embeddings of `run` (`<method>-<seed>`) at `path`; one that lacks an array, whose
    shapes, dtypes or labels disagree (with each other, or with the model's class count and embedding size
    where given), or that another run's model wrote (a well-formed file copied over this one) is a one-line
    InputError naming the stage that remakes it."""
    produced_by = f"embed@{run}"
    arrays = load_npz(path, produced_by)
    known = {axis: (size, "the model") for axis, size in ((CLASSES, num_classes), (EMBEDDING, embedding_dim))
             if size is not None}
    check_arrays(arrays, schema(stores_logits(arrays)), path, produced_by, known)
    if str(arrays["run"]) != run:
        raise refuse(path, produced_by, f"the embeddings of {arrays['run']}, not of {run}")
    return arrays
