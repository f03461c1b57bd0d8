"""baseline: cross-entropy on clean, shuffled batches."""
from robust_cifar.params import Params
from robust_cifar.training.methods.batches import ShuffledBatches
from robust_cifar.training.methods.method import Method
from robust_cifar.training.methods.objectives import CrossEntropyHead

NAME = "baseline"
LABEL = "base"   # its columns in `dvc exp show` (reports/metrics.json): a few letters
OBJECTIVE = CrossEntropyHead
WRITE_UP = ("head", 70.93, 46.56)   # the write-up's decision and test accuracy, clean / perturbed (%)


def from_params(params: Params) -> Method:
    return Method(NAME, OBJECTIVE(), ShuffledBatches.from_params(params, NAME))
