"""A training method as one object: its objective, its batch order and its training-time perturbation.

The training loop, `embed` and evaluation ask the method (and its objective) and never branch
on its name. Each method's settings live in one params.yaml section named after it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from robust_cifar.compute import Compute
from robust_cifar.model import CifarResNet18
from robust_cifar.perturbations.perturb import PerturbSettings, apply_perturbations, draw_perturbations
from robust_cifar.training.methods.batches import BalancedBatches, ShuffledBatches
from robust_cifar.training.methods.objectives import AngularEmbedding, CrossEntropyHead

Objective = Union[CrossEntropyHead, AngularEmbedding]
BatchOrder = Union[ShuffledBatches, BalancedBatches]


@dataclass(frozen=True)
class Method:
    name: str
    objective: Objective
    batch_order: BatchOrder
    # Replace each training batch by a perturbed one, drawn afresh every batch (adversarial training)
    training_perturbation: Optional[PerturbSettings] = None

    @property
    def has_head(self) -> bool:
        return self.objective.has_head

    def training_images(self, model: CifarResNet18, images: Tensor, labels: Tensor, num_classes: int,
                        generator: torch.Generator, compute: Compute, fixed_shape: bool = False) -> Tensor:
        """The images this step trains on: the clean batch, or its perturbed version.

        FGM attacks the model's own decision as it is at this step, in eval mode, so the attack's
        forward passes neither move batch-norm statistics nor mix rows. `fixed_shape`: FGM on
        every row, for a step replayed as a CUDA graph (`apply_perturbations`).
        """
        settings = self.training_perturbation
        if settings is None:
            return images
        draw = draw_perturbations(len(images), tuple(images.shape[1:]), settings, generator, images.device)
        model.eval()
        with compute.autocast(cache_enabled=False):   # capturable; the casts are the same either way
            score = self.objective.batch_score_fn(model, images, labels, num_classes)
            perturbed = apply_perturbations(images, draw, settings, score_fn=score, fixed_shape=fixed_shape)
        model.train()
        return perturbed
