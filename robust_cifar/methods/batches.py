"""The order in which a method sees its training images each epoch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robust_cifar.params import POSITIVE_INT, Params, whole
from robust_cifar.sampling import balanced_batches, shuffled_batches

PER_CLASS = whole(lambda v: v >= 2, "a whole number >= 2 (a class needs positive pairs)")


@dataclass(frozen=True)
class ShuffledBatches:
    batch_size: int

    @classmethod
    def from_params(cls, params: Params, section: str) -> "ShuffledBatches":
        return cls(params.value(f"{section}.batch_size", POSITIVE_INT))

    def epoch(self, labels: Tensor, generator: torch.Generator) -> list[Tensor]:
        return shuffled_batches(len(labels), self.batch_size, generator)


@dataclass(frozen=True)
class BalancedBatches:
    """`per_class` images of every class in each batch (260 = 26 x 10 in the study)."""
    per_class: int

    @classmethod
    def from_params(cls, params: Params, section: str) -> "BalancedBatches":
        return cls(params.value(f"{section}.per_class", PER_CLASS))

    def epoch(self, labels: Tensor, generator: torch.Generator) -> list[Tensor]:
        return balanced_batches(labels.cpu(), self.per_class, generator)
