"""The three training methods as data, and each model's differentiable decision path.

A method is its objective, its batch order and whether it perturbs its training batches: the
training loop is shared. Adding a fourth method means one entry here, one in params.yaml's
reading code and one in dvc.yaml's method table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from robust_cifar.model import CifarResNet18

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Method:
    name: str
    objective: str            # "cross_entropy" on the head, or "angular" on the normalized embedding
    balanced_batches: bool    # class-balanced batches (angular.per_class of every class)
    perturb_on_the_fly: bool  # replace training images by perturbed ones (adversarial training)

    @property
    def has_head(self) -> bool:
        """Whether the 10-way head is trained (the angular model's head is never used)."""
        return self.objective == "cross_entropy"


METHODS = {
    "baseline": Method("baseline", "cross_entropy", balanced_batches=False, perturb_on_the_fly=False),
    "adversarial": Method("adversarial", "cross_entropy", balanced_batches=False, perturb_on_the_fly=True),
    "angular": Method("angular", "angular", balanced_batches=True, perturb_on_the_fly=False),
}


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Unit-length mean embedding of each class."""
    sums = torch.zeros(num_classes, embeddings.shape[1], device=embeddings.device, dtype=torch.float32)
    sums.index_add_(0, labels, embeddings.float())
    return F.normalize(sums, dim=1)


def soft_nearest_class_score(model: CifarResNet18, means: torch.Tensor, temperature: float) -> ScoreFn:
    """A differentiable stand-in for a nearest-neighbour decision on the embedding.

    Logits are cosine similarities to each class's mean clean training embedding divided by a
    temperature: FGM can follow their gradient where the 3-NN itself has none.
    """
    def score(images: torch.Tensor) -> torch.Tensor:
        return model.embed(images) @ means.T / temperature
    return score


def decision_score(method: Method, model: CifarResNet18, means: torch.Tensor | None = None,
                   temperature: float | None = None) -> ScoreFn:
    """What a white-box attack on this method differentiates: the head, or the soft nearest-class score."""
    if method.has_head:
        return model
    if means is None or temperature is None:
        raise ValueError(f"the {method.name} model has no head: its attack score needs class means and a temperature")
    return soft_nearest_class_score(model, means, temperature)
