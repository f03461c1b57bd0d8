"""adversarial: cross-entropy on batches whose images are jittered / noised / FGM-attacked on the fly."""
from robust_cifar.methods.batches import ShuffledBatches
from robust_cifar.methods.method import Method
from robust_cifar.methods.objectives import CrossEntropyHead
from robust_cifar.params import Params
from robust_cifar.perturb import PerturbSettings

NAME = "adversarial"


def from_params(params: Params) -> Method:
    return Method(NAME, CrossEntropyHead(), ShuffledBatches.from_params(params, NAME),
                  training_perturbation=PerturbSettings.from_params(params, f"{NAME}.perturb"))
