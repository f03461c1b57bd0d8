"""Adversarial examples in pixel space against a differentiable decision, aimed away from the true label.

Images are float tensors (B, 3, H, W) in [0, 1] and every attack here is an L-inf attack: its
output stays within ``eps`` of the input and inside [0, 1]. Every attack takes the TRUE labels and
moves away from them: robust accuracy counts an image as robust only if it is classified
correctly on the clean input and under every attack (``robust_cifar.evaluation.robustness``), and an
attack aimed at the model's own prediction could move a misclassified image INTO its true class.
(The write-up's "perturbed" condition, FGM against the model's own prediction, is
``robust_cifar.perturbations.perturb.fgm``; it is not used for robust accuracy.) Putting the model in eval mode
is the caller's job (batch-norm statistics must not mix rows, so each image's attack is
independent of the rest of the batch). All attacks

- differentiate w.r.t. the input only (``torch.autograd.grad``): parameters' ``.grad`` are never
  touched;
- run under ``torch.enable_grad()``, so evaluation loops can call them under ``no_grad``;
- compute their losses in at least float32;
- are batched on the input's device, and deterministic given a ``torch.Generator`` on that device.

What is here (APGD has a file of its own, ``robust_cifar.evaluation.apgd``):

- :func:`fgm_step`: one signed-gradient step of size eps (FGSM, Goodfellow et al. 2015).
- :func:`pgd` (from ``robust_cifar.perturbations.pgd``, which pgd_adversarial trains with too): projected
  gradient descent from a random start (Madry et al. 2018); one run per call: restarts are separate calls,
  each a candidate the evaluation scores.
- :func:`soft_knn_score`: a differentiable surrogate of a k-NN vote over all the clean training
  embeddings, so gradient attacks can aim at the 3-NN decision.
- :func:`guide_sample_attack`: the feature-space attack on k-NN of Sitawarin & Wagner ("On the
  Robustness of Deep K-Nearest Neighbors", DLS 2019; "Minimum-Norm Adversarial Examples on KNN
  and KNN-based Models", DLS 2020): pull an image's embedding towards training embeddings of the
  nearest class other than its true one.
"""
from __future__ import annotations

import torch
from torch import Tensor

from robust_cifar.perturbations.perturb import ScoreFn
from robust_cifar.perturbations.pgd import ascend, check_budget, random_start, summed_cross_entropy

__all__ = ["fgm_step", "soft_knn_score", "guide_sample_attack"]


# ---------------------------------------------------------------------------------------------
# FGSM on the true label (PGD and the shared machinery: robust_cifar.perturbations.pgd)
# ---------------------------------------------------------------------------------------------


def fgm_step(score_fn: ScoreFn, x: Tensor, labels: Tensor, eps: float) -> Tensor:
    """One step of size eps along the sign of the cross-entropy's gradient against ``labels``
    (FGSM), from the clean image: the single-step attack the iterative ones must beat."""
    check_budget(eps, 1, eps)
    x = x.detach()
    if eps == 0:
        return x.clone()
    return ascend(summed_cross_entropy(score_fn, labels.to(x.device)), x, x, eps, 1, eps)


# ---------------------------------------------------------------------------------------------
# Attacks on a k-NN decision over embeddings
# ---------------------------------------------------------------------------------------------


def _fit_set(train_embeddings: Tensor, train_labels: Tensor) -> Tensor:
    if train_embeddings.ndim != 2 or train_labels.shape != (train_embeddings.shape[0],):
        raise ValueError(f"expected train_embeddings (N, D) and train_labels (N,), got "
                         f"{tuple(train_embeddings.shape)} and {tuple(train_labels.shape)}")
    # The embeddings are targets, never optimised: no graph into whatever produced them.
    return train_embeddings.detach().float()


def soft_knn_score(model, train_embeddings: Tensor, train_labels: Tensor, num_classes: int,
                   temperature: float) -> ScoreFn:
    """A differentiable surrogate of the k-NN vote over clean training embeddings: images -> scores.

    Class c's score is the logsumexp, over ALL of class c's training embeddings j, of
    cos(embed(image), train_j) / temperature: a soft maximum of the image's similarity to the
    class (the stochastic neighbour vote of Goldberger et al., "Neighbourhood Components Analysis",
    NIPS 2004, up to a shift shared by every class). As the temperature falls its argmax tends to
    the 1-NN decision; larger temperatures take gradients from farther neighbours. Every training
    point takes part, so no pre-selection can hide a neighbour, and a per-class logsumexp never
    underflows: every class keeps a gradient, which DLR-type losses need.

    ``model.embed`` must return unit-length embeddings (cosine = dot product) on the device of
    ``train_embeddings``; every class in ``range(num_classes)`` needs training embeddings. Computed
    in float32 without autocast (bf16 similarities would reorder neighbours).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    fit = _fit_set(train_embeddings, train_labels)
    train_labels = train_labels.to(fit.device)
    members = [(train_labels == c).nonzero().squeeze(1) for c in range(num_classes)]
    if any(len(rows) == 0 for rows in members):
        raise ValueError(f"the soft k-NN score needs training embeddings of every one of {num_classes} classes")

    def score(images: Tensor) -> Tensor:
        queries = model.embed(images)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            scaled = queries.float() @ fit.T / temperature
            return torch.stack([scaled[:, rows].logsumexp(dim=1) for rows in members], dim=1)
    return score


def choose_guides(clean: Tensor, fit: Tensor, train_labels: Tensor, away_from: Tensor, k: int) -> Tensor:
    """Indices (B, k) into ``fit`` of each image's guides (Sitawarin & Wagner 2019): the k training
    embeddings of the class, other than ``away_from``, whose k nearest training embeddings are
    closest to the image on average (Euclidean), i.e. the nearest class the vote could flip to."""
    class_ids = train_labels.unique(sorted=True)
    if len(class_ids) < 2:
        raise ValueError("the guide attack needs training embeddings of at least two classes")
    mean_distances, candidates = [], []
    for c in class_ids:  # ten classes: a loop over classes, never over images
        members = (train_labels == c).nonzero().squeeze(1)
        if len(members) < k:
            raise ValueError(f"class {int(c)} has {len(members)} training embeddings, fewer than k={k}")
        sims, nearest = (clean @ fit[members].T).topk(k, dim=1)
        # Unit vectors: |a - b|^2 = 2 - 2 a.b (clamped: rounding can make it slightly negative).
        mean_distances.append((2 - 2 * sims).clamp_min(0).sqrt().mean(dim=1))
        candidates.append(members[nearest])
    mean_distances = torch.stack(mean_distances, dim=1)  # (B, C)
    own_class = class_ids.unsqueeze(0) == away_from.unsqueeze(1)
    target = mean_distances.masked_fill(own_class, float("inf")).argmin(dim=1)
    return torch.stack(candidates, dim=1)[torch.arange(len(clean), device=clean.device), target]


def guide_sample_attack(model, x: Tensor, labels: Tensor, train_embeddings: Tensor, train_labels: Tensor,
                        eps: float, steps: int, step_size: float, k: int, generator: torch.Generator | None) -> Tensor:
    """The guide-sample attack on a k-NN over embeddings (Sitawarin & Wagner, DLS 2019 and 2020).

    For each image: the nearest class other than its true label (``labels``) and that class's k
    guides (:func:`choose_guides`); then L-inf PGD in pixel space from a uniform random start
    (drawn from ``generator``) that maximises the mean cosine similarity between the image's
    embedding and its guides. For unit vectors this is minimising their mean squared distance, the
    papers' objective without its sigmoid threshold. Returns the last iterate. ``eps == 0`` returns
    ``x`` unchanged.
    """
    check_budget(eps, steps, step_size)
    x = x.detach()
    if eps == 0:
        return x.clone()
    fit = _fit_set(train_embeddings, train_labels).to(x.device)
    train_labels = train_labels.to(x.device)
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        clean = model.embed(x).float()
        guides = choose_guides(clean, fit, train_labels, labels.to(x.device), k)
        # The mean of cosine similarities to the guides is the similarity to their mean.
        guide_mean = fit[guides].mean(dim=1)

    def mean_similarity_to_guides(images: Tensor) -> Tensor:
        return (model.embed(images).float() * guide_mean).sum()

    return ascend(mean_similarity_to_guides, x, random_start(x, eps, generator), eps, steps, step_size)
