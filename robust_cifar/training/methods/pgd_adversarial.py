"""pgd_adversarial: cross-entropy on L-inf PGD examples (Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018), the field's reference defence; not in the write-up.

Every training image is replaced by a PGD example against its true label (pgd_examples.py). The eps is
this section's own, so changing the evaluation's eps retrains nothing.
"""
from __future__ import annotations

from robust_cifar.params import Params, bounded_int
from robust_cifar.perturbations.perturb import EPS_255
from robust_cifar.training.methods.batches import ShuffledBatches
from robust_cifar.training.methods.method import Method
from robust_cifar.training.methods.objectives import CrossEntropyHead
from robust_cifar.training.methods.pgd_examples import PgdExamples

NAME = "pgd_adversarial"
LABEL = "pgd"
OBJECTIVE = CrossEntropyHead
# The CPU presets train it with 2 PGD steps: with 7 its training costs four times a baseline's (docs/speed.md)
ON_A_CPU = {"steps": 2}


def from_params(params: Params) -> Method:
    examples = PgdExamples(eps=params.value(f"{NAME}.eps_255", EPS_255) / 255,
                           steps=params.value(f"{NAME}.steps", bounded_int(1, 1_000, "Madry et al. train with 7")))
    return Method(NAME, OBJECTIVE(), ShuffledBatches.from_params(params, NAME), training_perturbation=examples)
