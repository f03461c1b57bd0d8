"""angular: angular loss (Wang et al. 2017) on L2-normalized embeddings of class-balanced batches."""
from robust_cifar.params import Params
from robust_cifar.training.methods.batches import BalancedBatches
from robust_cifar.training.methods.method import Method
from robust_cifar.training.methods.objectives import AngularEmbedding

NAME = "angular"


def from_params(params: Params) -> Method:
    batches = BalancedBatches.from_params(params, NAME)
    return Method(NAME, AngularEmbedding.from_params(params, NAME, batches.per_class), batches)
