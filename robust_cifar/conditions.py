"""The names that evaluation results are filed under: splits, perturbation kinds and conditions.

A light module (no torch, params only), so the stages that only read results (umap_plot, summarize) stay light.

Conditions (all from the same seeded plan, so every model sees the same jitter and noise):
- clean;
- perturbed: the plan's perturbations, FGM white-box against the evaluated model's decision;
- transfer: the same, FGM against the reference method's model (robust_cifar.training.methods), so every
  model gets identical inputs;
- jitter / noise / fgm (test only): one perturbation applied to every image.
"""

from robust_cifar.params import Params, bounded_int

SPLITS = ("train", "val", "test")
KINDS = ("jitter", "noise", "fgm")  # perturbation kinds, in the order they are applied
CONDITIONS = ("clean", "perturbed", "transfer")
SINGLE_PERTURBATION_SPLIT = "test"
DECISIONS = ("head", "knn")   # how a model classifies: its 10-way head, a k-NN (knn.k) on its embedding


def knn_k(params: Params) -> int:
    """`knn.k`: how many nearest neighbours the "knn" decision's vote takes."""
    return params.value("knn.k", bounded_int(1, 99, "a vote of more neighbours is another classifier than the study's 3-NN"))


def decision_labels(k: int) -> dict[str, str]:
    """{decision: its name in reports and figures}: "head", and "3-NN" for a vote of k = 3 neighbours."""
    return {decision: f"{k}-NN" if decision == "knn" else decision for decision in DECISIONS}


def conditions_for(split: str) -> tuple[str, ...]:
    return CONDITIONS + (KINDS if split == SINGLE_PERTURBATION_SPLIT else ())
