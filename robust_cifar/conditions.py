"""The names that evaluation results are filed under: splits, perturbation kinds and conditions.

A leaf module (no torch), so the stages that only read results (umap_plot) stay light.

Conditions (all from the same seeded plan, so every model sees the same jitter and noise):
- clean;
- perturbed: the plan's perturbations, FGM white-box against the evaluated model's decision;
- transfer: the same, FGM against the reference method's model (robust_cifar.training.methods), so every
  model gets identical inputs;
- jitter / noise / fgm (test only): one perturbation applied to every image.
"""

SPLITS = ("train", "val", "test")
KINDS = ("jitter", "noise", "fgm")  # perturbation kinds, in the order they are applied
CONDITIONS = ("clean", "perturbed", "transfer")
SINGLE_PERTURBATION_SPLIT = "test"
DECISIONS = {"head": "head", "knn": "3-NN"}   # how a model classifies: its 10-way head, a 3-NN on its embedding


def conditions_for(split: str) -> tuple[str, ...]:
    return CONDITIONS + (KINDS if split == SINGLE_PERTURBATION_SPLIT else ())
