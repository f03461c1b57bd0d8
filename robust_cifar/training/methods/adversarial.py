"""adversarial: cross-entropy on batches whose images are jittered / noised / FGM-attacked on the fly."""
from robust_cifar.params import Params
from robust_cifar.perturbations.perturb import PerturbSettings
from robust_cifar.training.methods.batches import ShuffledBatches
from robust_cifar.training.methods.drawn_perturbations import DrawnPerturbations
from robust_cifar.training.methods.method import Method
from robust_cifar.training.methods.objectives import CrossEntropyHead

NAME = "adversarial"
LABEL = "adv"
OBJECTIVE = CrossEntropyHead
WRITE_UP = ("head", 68.46, 51.92)


def from_params(params: Params) -> Method:
    return Method(NAME, OBJECTIVE(), ShuffledBatches.from_params(params, NAME),
                  training_perturbation=DrawnPerturbations(PerturbSettings.from_params(params, f"{NAME}.perturb")))
