"""pgd_adversarial: cross-entropy on L-inf PGD examples (Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018), the field's reference defence; not in the write-up.

Every training image is replaced by a PGD example against its true label: a uniform start in the
eps-ball, then `steps` signed-gradient steps of 2.5 eps / steps, each projected onto the ball and [0, 1].
The eps is this section's own, so changing the evaluation's eps retrains nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robust_cifar.params import Params, bounded_int
from robust_cifar.perturbations.perturb import EPS_255, ScoreFn
from robust_cifar.perturbations.pgd import pgd
from robust_cifar.training.methods.batches import ShuffledBatches
from robust_cifar.training.methods.method import Method
from robust_cifar.training.methods.objectives import CrossEntropyHead

NAME = "pgd_adversarial"
LABEL = "pgd"
OBJECTIVE = CrossEntropyHead
# The CPU presets train it with 2 PGD steps: with 7 its training costs four times a baseline's (docs/speed.md)
ON_A_CPU = {"steps": 2}


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


def from_params(params: Params) -> Method:
    examples = PgdExamples(eps=params.value(f"{NAME}.eps_255", EPS_255) / 255,
                           steps=params.value(f"{NAME}.steps", bounded_int(1, 1_000, "Madry et al. train with 7")))
    return Method(NAME, OBJECTIVE(), ShuffledBatches.from_params(params, NAME), training_perturbation=examples)
