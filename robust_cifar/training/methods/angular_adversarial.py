"""angular_adversarial: the angular loss on class-balanced batches perturbed on the fly, FGM against
the model's own soft nearest-class score (not in the write-up)."""
from robust_cifar.params import Params
from robust_cifar.perturbations.perturb import PerturbSettings
from robust_cifar.training.methods.batches import BalancedBatches
from robust_cifar.training.methods.drawn_perturbations import DrawnPerturbations
from robust_cifar.training.methods.method import Method
from robust_cifar.training.methods.objectives import AngularEmbedding

NAME = "angular_adversarial"
LABEL = "angadv"
OBJECTIVE = AngularEmbedding


def from_params(params: Params) -> Method:
    batches = BalancedBatches.from_params(params, NAME)
    return Method(NAME, OBJECTIVE.from_params(params, NAME, batches.per_class), batches,
                  training_perturbation=DrawnPerturbations(PerturbSettings.from_params(params, f"{NAME}.perturb")))
