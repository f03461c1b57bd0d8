"""The study's training-time perturbations: jitter, noise and FGM, each gated with probability p.

Drawn afresh for every training batch (adversarial training, as the write-up), and once per run for the
perturbed validation, so the per-epoch curve compares like with like.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robust_cifar.evaluation.inference import BatchTransform
from robust_cifar.perturbations.perturb import PerturbSettings, ScoreFn, apply_perturbations, draw_perturbations


@dataclass(frozen=True)
class DrawnPerturbations:
    settings: PerturbSettings

    def batch(self, images: Tensor, labels: Tensor, score_fn: ScoreFn, generator: torch.Generator,
              fixed_shape: bool) -> Tensor:
        """The perturbed batch. FGM attacks the model's own decision (labels unused); `fixed_shape`: FGM on
        every row, for a step replayed as a CUDA graph (`apply_perturbations`)."""
        draw = draw_perturbations(len(images), tuple(images.shape[1:]), self.settings, generator, images.device)
        return apply_perturbations(images, draw, self.settings, score_fn=score_fn, fixed_shape=fixed_shape)

    def validation(self, labels: Tensor, image_shape: tuple[int, ...], generator: torch.Generator):
        """score_fn -> the transform of validation batches: one draw for the whole split, from `generator`."""
        draw = draw_perturbations(len(labels), image_shape, self.settings, generator, labels.device)

        def with_score(score_fn: ScoreFn) -> BatchTransform:
            def transform(images: Tensor, start: int, stop: int) -> Tensor:
                return apply_perturbations(images, draw.rows(start, stop), self.settings, score_fn=score_fn)
            return transform
        return with_score
