"""baseline: cross-entropy on clean, shuffled batches."""
from robust_cifar.methods.batches import ShuffledBatches
from robust_cifar.methods.method import Method
from robust_cifar.methods.objectives import CrossEntropyHead
from robust_cifar.params import Params

NAME = "baseline"


def from_params(params: Params) -> Method:
    return Method(NAME, CrossEntropyHead(), ShuffledBatches.from_params(params, NAME))
