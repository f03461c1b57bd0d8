"""The order in which a method sees its training images each epoch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robust_cifar.params import Params, bounded_int
from robust_cifar.training.sampling import balanced_batches, shuffled_batches

BATCH_SIZE = bounded_int(1, 65_536, "images per step; the study uses 256")
PER_CLASS = bounded_int(2, 1_000, "a class needs positive pairs; the study uses 26")


@dataclass(frozen=True)
class ShuffledBatches:
    batch_size: int

    @classmethod
    def from_params(cls, params: Params, section: str) -> "ShuffledBatches":
        return cls(params.value(f"{section}.batch_size", BATCH_SIZE))

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
