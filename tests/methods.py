"""The registered methods the tests mean, picked by what they are, so that no test names a method:
renaming one, or adding a sixth, leaves every test as it is."""
from robust_cifar.params import Params
from robust_cifar.training.methods.registry import shaped_like
from robust_cifar.training.methods.drawn_perturbations import DrawnPerturbations
from robust_cifar.training.methods.objectives import AngularEmbedding, CrossEntropyHead
from robust_cifar.training.methods.pgd_examples import PgdExamples
from tests.pipeline_project import PARAMS

_STUDY = Params(PARAMS)
HEAD = shaped_like(CrossEntropyHead, None, _STUDY)                           # a head on clean images
PERTURBED_HEAD = shaped_like(CrossEntropyHead, DrawnPerturbations, _STUDY)   # a head on the study's perturbations
PGD_HEAD = shaped_like(CrossEntropyHead, PgdExamples, _STUDY)                # a head on PGD examples
ANGULAR = shaped_like(AngularEmbedding, None, _STUDY)                        # the angular loss on clean images
PERTURBED_ANGULAR = shaped_like(AngularEmbedding, DrawnPerturbations, _STUDY)

__all__ = ["ANGULAR", "HEAD", "PERTURBED_ANGULAR", "PERTURBED_HEAD", "PGD_HEAD"]
