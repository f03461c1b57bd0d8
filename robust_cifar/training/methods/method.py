"""A training method as one object: its objective, its batch order and its training-time perturbation.

The training loop, `embed` and evaluation ask the method (and its objective) and never branch
on its name. Each method's settings live in one params.yaml section named after it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

import torch
from torch import Tensor

from robust_cifar.compute import Compute
from robust_cifar.evaluation.inference import BatchTransform
from robust_cifar.model import CifarResNet18
from robust_cifar.perturbations.perturb import ScoreFn
from robust_cifar.training.methods.batches import BalancedBatches, ShuffledBatches
from robust_cifar.training.methods.objectives import AngularEmbedding, CrossEntropyHead

Objective = Union[CrossEntropyHead, AngularEmbedding]
BatchOrder = Union[ShuffledBatches, BalancedBatches]


class TrainingPerturbation(Protocol):
    """What a method trained on perturbed images does to them (DrawnPerturbations: the study's)."""

    def batch(self, images: Tensor, labels: Tensor, score_fn: ScoreFn, generator: torch.Generator,
              fixed_shape: bool) -> Tensor:
        """A training batch's images, perturbed with draws from `generator`; `fixed_shape`: the same work
        and shapes at every call and no host read (a step replayed as a CUDA graph)."""

    def validation(self, labels: Tensor, image_shape: tuple[int, ...],
                   generator: torch.Generator) -> Callable[[ScoreFn], BatchTransform]:
        """score_fn -> the transform of the validation split's batches, drawn once from `generator` for
        the whole split, so every epoch's perturbed accuracy sees the same perturbations."""


@dataclass(frozen=True)
class Method:
    name: str
    objective: Objective
    batch_order: BatchOrder
    # Replace each training batch by a perturbed one, drawn afresh every batch (adversarial training)
    training_perturbation: Optional[TrainingPerturbation] = None

    @property
    def has_head(self) -> bool:
        return self.objective.has_head

    def training_images(self, model: CifarResNet18, images: Tensor, labels: Tensor, num_classes: int,
                        generator: torch.Generator, compute: Compute, fixed_shape: bool = False) -> Tensor:
        """The images this step trains on: the clean batch, or its perturbed version.

        The perturbation attacks the model as it is at this step, in eval mode, so the attack's
        forward passes neither move batch-norm statistics nor mix rows. `fixed_shape`: a step replayed
        as a CUDA graph (TrainingPerturbation.batch).
        """
        if self.training_perturbation is None:
            return images
        model.eval()
        with compute.autocast(cache_enabled=False):   # capturable; the casts are the same either way
            score = self.objective.batch_score_fn(model, images, labels, num_classes)
            perturbed = self.training_perturbation.batch(images, labels, score, generator, fixed_shape)
        model.train()
        return perturbed
