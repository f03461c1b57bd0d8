"""angular: angular loss (Wang et al. 2017) on L2-normalized embeddings of class-balanced batches."""
from robust_cifar.params import Params
from robust_cifar.training.methods.batches import BalancedBatches
from robust_cifar.training.methods.method import Method
from robust_cifar.training.methods.objectives import AngularEmbedding

NAME = "angular"
LABEL = "ang"
OBJECTIVE = AngularEmbedding
WRITE_UP = ("knn", 73.23, 52.07)


def from_params(params: Params) -> Method:
    batches = BalancedBatches.from_params(params, NAME)
    return Method(NAME, OBJECTIVE.from_params(params, NAME, batches.per_class), batches)
