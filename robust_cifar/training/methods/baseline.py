"""baseline: cross-entropy on clean, shuffled batches."""
from robust_cifar.params import Params
from robust_cifar.training.methods.batches import ShuffledBatches
from robust_cifar.training.methods.method import Method
from robust_cifar.training.methods.objectives import CrossEntropyHead

NAME = "baseline"


def from_params(params: Params) -> Method:
    return Method(NAME, CrossEntropyHead(), ShuffledBatches.from_params(params, NAME))
