"""What a model is trained to do and how it decides: a 10-way head, or an embedding read by nearest class.

An objective owns the training loss, the training accuracy, how predictions are made from
embeddings or logits, and the decision an attack differentiates (the head itself, or a soft
nearest-class score where the decision has no gradient).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_cifar.deterministic import write_rows
from robust_cifar.model import CifarResNet18
from robust_cifar.params import Params, bounded_real, real
from robust_cifar.training.angular_loss import angular_loss
from robust_cifar.training.sampling import balanced_batches

ScoreFn = Callable[[Tensor], Tensor]

ALPHA = real(lambda v: 0 < v < 90, "an angle in degrees strictly between 0 and 90")


def class_means(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Unit-length mean embedding of each class.

    A float64 one-hot matrix product rather than index_add_ (atomic adds on CUDA): the same
    bits on every run on any device, and float64 escapes the TF32 rounding of float32 matmuls.
    """
    one_hot = F.one_hot(labels, num_classes).to(torch.float64)
    return F.normalize((one_hot.T @ embeddings.to(torch.float64)).float(), dim=1)


def nearest_mean(embeddings: Tensor, means: Tensor) -> Tensor:
    return (embeddings.float() @ means.T).argmax(1)


def soft_nearest_class_score(model: CifarResNet18, means: Tensor, temperature: float) -> ScoreFn:
    """A differentiable stand-in for a nearest-neighbour decision on the embedding.

    Logits are cosine similarities to each class's mean clean training embedding divided by a
    temperature: FGM can follow their gradient where the 3-NN itself has none.
    """
    def score(images: Tensor) -> Tensor:
        return model.embed(images) @ means.T / temperature
    return score


class HeadAccuracy:
    """Running training accuracy of the head's argmax, accumulated on the device."""

    def __init__(self, n: int, device: torch.device):
        self.correct = torch.zeros((), device=device)

    def update(self, logits: Tensor, labels: Tensor, indices: Tensor) -> None:
        self.correct += (logits.argmax(1) == labels).sum()

    def value(self, labels: Tensor, seen: int) -> Tensor:
        return self.correct / seen


class NearestMeanAccuracy:
    """Training accuracy of a head-less model: nearest class mean of this epoch's embeddings."""

    def __init__(self, n: int, dim: int, num_classes: int, device: torch.device):
        self.embeddings = torch.zeros(n, dim, device=device)
        self.num_classes = num_classes

    def update(self, embeddings: Tensor, labels: Tensor, indices: Tensor) -> None:
        # a repeated index (a small class in a balanced batch) must not be a race between threads
        write_rows(self.embeddings, indices, embeddings.float())

    def value(self, labels: Tensor, seen: int) -> Tensor:
        means = class_means(self.embeddings, labels, self.num_classes)
        return (nearest_mean(self.embeddings, means) == labels).float().mean()


@dataclass(frozen=True)
class CrossEntropyHead:
    """Cross-entropy on the 10-way head; the head decides and is what attacks differentiate."""
    loss_name = "cross-entropy"   # the figures put losses of one name on one axis
    has_head = True

    def loss(self, model: CifarResNet18, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(images)
        return F.cross_entropy(logits.float(), labels), logits

    def training_accuracy(self, n: int, model: CifarResNet18, num_classes: int, device) -> HeadAccuracy:
        return HeadAccuracy(n, device)

    def reference(self, train_embeddings: Optional[Tensor], train_labels: Tensor, num_classes: int) -> None:
        return None  # the head needs nothing from the training set to decide

    needs_train_embeddings = False

    def predict(self, embeddings: Tensor, logits: Tensor, reference) -> Tensor:
        return logits.argmax(1)

    def score_fn(self, model: CifarResNet18, reference) -> ScoreFn:
        return model

    def batch_score_fn(self, model: CifarResNet18, images: Tensor, labels: Tensor, num_classes: int) -> ScoreFn:
        return model

    def validation_loss(self, embeddings: Tensor, logits: Tensor, labels: Tensor, seed: int) -> float:
        return F.cross_entropy(logits, labels).item()


@dataclass(frozen=True)
class AngularEmbedding:
    """Angular loss on the L2-normalized embedding (no head). Decisions are by nearest class mean
    (validation) or 3-NN (evaluation); attacks differentiate the soft nearest-class score."""
    alpha: float                # degrees
    per_class: int              # class-balanced batches: the validation loss uses the same shape
    attack_temperature: float   # of the soft nearest-class score
    loss_name = "angular"
    has_head = False
    needs_train_embeddings = True

    @classmethod
    def from_params(cls, params: Params, section: str, per_class: int) -> "AngularEmbedding":
        return cls(alpha=params.value(f"{section}.alpha", ALPHA), per_class=per_class,
                   attack_temperature=params.value(f"{section}.attack_temperature",
                                                  bounded_real(0, 100, "cosine similarities lie in [-1, 1]", open_low=True)))

    def loss(self, model: CifarResNet18, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        embeddings = model.embed(images)
        # training batches are class-balanced (BalancedBatches): the grouping needs no host sync
        return angular_loss(embeddings, labels, self.alpha, per_class=self.per_class), embeddings

    def training_accuracy(self, n: int, model: CifarResNet18, num_classes: int, device) -> NearestMeanAccuracy:
        return NearestMeanAccuracy(n, model.config["embedding_dim"], num_classes, device)

    def reference(self, train_embeddings: Tensor, train_labels: Tensor, num_classes: int) -> Tensor:
        return class_means(train_embeddings, train_labels, num_classes)

    def predict(self, embeddings: Tensor, logits: Tensor, reference: Tensor) -> Tensor:
        return nearest_mean(embeddings, reference)

    def score_fn(self, model: CifarResNet18, reference: Tensor) -> ScoreFn:
        return soft_nearest_class_score(model, reference, self.attack_temperature)

    def batch_score_fn(self, model: CifarResNet18, images: Tensor, labels: Tensor, num_classes: int) -> ScoreFn:
        """During training the class means come from the batch's own clean embeddings (a balanced
        batch holds every class), so the attack follows the model as it is at this step."""
        with torch.no_grad():
            means = class_means(model.embed(images), labels, num_classes)
        return self.score_fn(model, means)

    def validation_loss(self, embeddings: Tensor, logits: Tensor, labels: Tensor, seed: int) -> float:
        """The angular loss itself, on class-balanced validation batches in a fixed order."""
        order = balanced_batches(labels.cpu(), self.per_class, torch.Generator().manual_seed(seed))
        losses = [angular_loss(embeddings[batch], labels[batch], self.alpha, per_class=self.per_class)
                  for batch in (batch.to(embeddings.device) for batch in order)]
        return torch.stack(losses).mean().item()
