"""Madry et al.'s training examples (ICLR 2018): every image replaced by an L-inf PGD example against its
true label, from a uniform start in the eps-ball, `steps` signed-gradient steps of 2.5 eps / steps, each
projected onto the ball and [0, 1]."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robust_cifar.perturbations.perturb import ScoreFn
from robust_cifar.perturbations.pgd import pgd


@dataclass(frozen=True)
class PgdExamples:
    eps: float   # pixel units
    steps: int

    @property
    def step_size(self) -> float:
        return 2.5 * self.eps / self.steps   # Madry et al.: enough to reach the ball's edge from any start

    def batch(self, images: Tensor, labels: Tensor, score_fn: ScoreFn, generator: torch.Generator,
              fixed_shape: bool) -> Tensor:
        # every row, no host read: the same work at every call, as a CUDA graph needs
        return pgd(score_fn, images, labels, self.eps, self.steps, self.step_size, generator)

    def validation(self, labels: Tensor, image_shape: tuple[int, ...], generator: torch.Generator):
        start_state = generator.get_state()

        def with_score(score_fn: ScoreFn):
            generator.set_state(start_state)   # the same random starts at every validation
            return lambda images, start, stop: pgd(score_fn, images, labels[start:stop], self.eps, self.steps,
                                                   self.step_size, generator)
        return with_score
