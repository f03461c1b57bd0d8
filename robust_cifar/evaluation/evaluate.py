"""Accuracy of a model's head and of a 3-NN on its embeddings, for every split and condition."""
from __future__ import annotations

import numpy as np
import torch

from robust_cifar.conditions import SPLITS, conditions_for
from robust_cifar.errors import ParamsError
from robust_cifar.evaluation.knn import knn_predict
from robust_cifar.params import fix_hint


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return round(float((predicted == labels).mean()), 6)


def has_head(arrays: dict[str, np.ndarray]) -> bool:
    """Whether the model's head decides: `embed` stores logits only for such models."""
    return "test.clean.logits" in arrays


def small_class_warning(k: int, train_labels: np.ndarray) -> str | None:
    """A vote of more neighbours than the smallest class has training images must count other classes' images
    whatever the query: the larger k grows past it, the nearer the k-NN comes to one vote over the whole training
    set (knn.k = 39 of 40 images predicts almost one class for every image). None where k is at most that size."""
    smallest = int(np.bincount(train_labels).min()) if len(train_labels) else 0
    if k <= smallest:
        return None
    return (f"warning: knn.k = {k} is more than the {smallest} training images of the smallest class: each vote "
            f"must count other classes' images, so the {k}-NN leans towards a vote over the whole training set "
            f"(near k = {len(train_labels)}, one class for every image); knn.k of at most {smallest} keeps it local")


def score_embeddings(arrays: dict[str, np.ndarray], k: int, device: torch.device,
                     ) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics {split: {condition: {"head": acc, "knn": acc}}} and the predictions behind them.

    The 3-NN is fit on the clean training embeddings of the same model. On the training split a
    query never counts its own row as a neighbour: leave-one-out when clean, and the clean twin
    of a perturbed training image is excluded. A model without a trained head gets no "head" key
    (not applicable, rather than zero).
    """
    with_head = has_head(arrays)
    fit = torch.from_numpy(arrays["train.clean.embeddings"]).to(device)
    if k > len(fit) - 1:
        # leave-one-out on the training split leaves len(fit) - 1 candidates
        raise ParamsError(f"`knn.k` = {k} is invalid: must be below the {len(fit)} training images; {fix_hint('knn.k')}")
    fit_labels = torch.from_numpy(arrays["train.labels"]).to(device)
    metrics: dict = {}
    predictions: dict[str, np.ndarray] = {}
    for split in SPLITS:
        labels = arrays[f"{split}.labels"]
        metrics[split] = {}
        for condition in conditions_for(split):
            query = torch.from_numpy(arrays[f"{split}.{condition}.embeddings"]).to(device)
            knn = knn_predict(fit, fit_labels, query, k, exclude_same_index=(split == "train")).cpu().numpy()
            predictions[f"{split}.{condition}.knn"] = knn
            entry = {}
            if with_head:
                head = arrays[f"{split}.{condition}.logits"].argmax(1)
                predictions[f"{split}.{condition}.head"] = head
                entry["head"] = accuracy(head, labels)
            entry["knn"] = accuracy(knn, labels)
            metrics[split][condition] = entry
    return metrics, predictions
