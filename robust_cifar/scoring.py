"""Accuracy of a model's head and of a 3-NN on its embeddings, for every split and condition."""
from __future__ import annotations

import numpy as np
import torch

from robust_cifar.knn import knn_predict
from robust_cifar.robustness import conditions_for
from robust_cifar.splits import SPLITS


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return round(float((predicted == labels).mean()), 6)


def score_embeddings(arrays: dict[str, np.ndarray], has_head: bool, k: int, device: torch.device,
                     ) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics {split: {condition: {"head": acc, "knn": acc}}} and the predictions behind them.

    The 3-NN is fit on the clean training embeddings of the same model. On the training split a
    query never counts its own row as a neighbour: leave-one-out when clean, and the clean twin
    of a perturbed training image is excluded. A model without a trained head gets no "head" key
    (not applicable, rather than zero).
    """
    fit = torch.from_numpy(arrays["train.clean.embeddings"]).to(device)
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
            if has_head:
                head = arrays[f"{split}.{condition}.logits"].argmax(1)
                predictions[f"{split}.{condition}.head"] = head
                entry["head"] = accuracy(head, labels)
            entry["knn"] = accuracy(knn, labels)
            metrics[split][condition] = entry
    return metrics, predictions
