"""Adversarial examples in pixel space against a differentiable decision.

Images are float tensors (B, 3, H, W) in [0, 1] and every attack here is an L-inf attack: its
output stays within ``eps`` of the input and inside [0, 1]. Putting the model in eval mode is the
caller's job (batch-norm statistics must not mix rows, so each image's attack is independent of
the rest of the batch). All attacks

- differentiate w.r.t. the input only (``torch.autograd.grad``): parameters' ``.grad`` are never
  touched, so an attack can run in the middle of a training step;
- run under ``torch.enable_grad()``, so evaluation loops can call them under ``no_grad``;
- compute their losses in at least float32, so they work under bf16 autocast;
- are batched on the input's device, and deterministic given a ``torch.Generator`` on that device.

What is here:

- :func:`fgm`: the one-step fast gradient sign attack (re-exported from robust_cifar.perturb,
  which owns it because the evaluation plan applies it).
- :func:`pgd`: projected gradient descent with random restarts (Madry et al., "Towards Deep
  Learning Models Resistant to Adversarial Attacks", ICLR 2018).
- :func:`soft_knn_score`: a differentiable surrogate of a k-NN vote over training embeddings, so
  FGM and PGD can attack the head-less models that a 3-NN classifies.
- :func:`guide_sample_attack`: the feature-space attack on k-NN of Sitawarin & Wagner ("On the
  Robustness of Deep K-Nearest Neighbors", DLS 2019; "Minimum-Norm Adversarial Examples on KNN
  and KNN-based Models", DLS 2020): pull an image's embedding towards training embeddings of the
  nearest other class.
- :func:`worst_case`: robust only if every attack failed, for reporting robust accuracy.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_cifar.knn import knn_predict
from robust_cifar.perturb import ScoreFn, fgm

__all__ = ["ScoreFn", "fgm", "pgd", "soft_knn_score", "guide_sample_attack", "worst_case", "DEFAULT_SOFT_KNN_K"]

# Training points the soft k-NN score keeps per query. The 3-NN decision is local; a few dozen
# neighbours give the surrogate a gradient towards the next classes without letting thousands of
# far-away points (which a small temperature weighs at ~0 anyway) cost memory.
DEFAULT_SOFT_KNN_K = 50

# Training points per similarity block when looking for neighbours: bounds the (B, block) matrix
# at 16 MiB for a batch of 1024, whatever the size of the training set.
SIMILARITY_CHUNK = 4096

Objective = Callable[[Tensor], Tensor]  # images -> a scalar the attack maximises


# ---------------------------------------------------------------------------------------------
# The shared L-inf machinery
# ---------------------------------------------------------------------------------------------


def _check_budget(eps: float, steps: int, step_size: float) -> None:
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] (pixel units), got {eps}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """The nearest point to ``x_adv`` in the L-inf eps-ball around ``x`` and in [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def random_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """A uniform draw from the eps-ball around ``x``, clipped to [0, 1] (Madry et al.'s start).

    Drawn on x's device with x's dtype, so a generator on that device gives the same start
    whatever else the attack does.
    """
    uniform = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return project(x + (2 * uniform - 1) * eps, x, eps)


def ascend(objective: Objective, x: Tensor, start: Tensor, eps: float, steps: int, step_size: float) -> Tensor:
    """``steps`` signed-gradient ascent steps on ``objective`` from ``start``, each projected back
    onto the eps-ball around ``x`` and [0, 1]; returns the last iterate (as Madry et al.)."""
    x_adv = start.detach()
    for _ in range(steps):
        # enable_grad: callers often evaluate under no_grad, and the attack needs the input gradient.
        with torch.enable_grad():
            x_in = x_adv.requires_grad_(True)
            # autograd.grad w.r.t. the input only: the parameters' .grad stay untouched.
            (grad,) = torch.autograd.grad(objective(x_in), x_in)
        x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def _at_least_float32(t: Tensor) -> Tensor:
    # Under autocast logits may be bf16, and a bf16 cross-entropy loses small gradients; a float64
    # model (the tests' exact reference) keeps its precision.
    return t.to(torch.promote_types(t.dtype, torch.float32))


# ---------------------------------------------------------------------------------------------
# PGD
# ---------------------------------------------------------------------------------------------


def own_predictions(score_fn: ScoreFn, x: Tensor) -> Tensor:
    """The decision's labels for the clean images: attacking them needs no ground truth (as FGM)."""
    with torch.no_grad():
        return score_fn(x).argmax(dim=1)


def summed_cross_entropy(score_fn: ScoreFn, labels: Tensor) -> Objective:
    # Summed, not averaged, so an image's gradient does not shrink with the batch size.
    return lambda images: F.cross_entropy(_at_least_float32(score_fn(images)), labels, reduction="sum")


def loss_and_fooled(score_fn: ScoreFn, x_adv: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: the cross-entropy against ``labels``, and whether the decision left ``labels``."""
    with torch.no_grad():
        logits = _at_least_float32(score_fn(x_adv))
        return F.cross_entropy(logits, labels, reduction="none"), logits.argmax(dim=1) != labels


def better_restart(loss: Tensor, fooled: Tensor, best_loss: Tensor, best_fooled: Tensor) -> Tensor:
    """Per image, whether a new restart beats the best so far: one that changes the decision beats
    one that does not, and between two alike the higher loss wins (ties keep the earlier).

    The highest loss alone could keep a restart that leaves the decision unchanged over one that
    changed it (cross-entropy need not be highest where the label lost the argmax), and robust
    accuracy counts changed decisions; the loss breaks ties so that extra restarts only help.
    """
    return (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))


def pgd(score_fn: ScoreFn, x: Tensor, eps: float, steps: int, step_size: float, restarts: int,
        generator: torch.Generator | None, labels: Tensor | None = None) -> Tensor:
    """Untargeted L-inf PGD with random restarts (Madry et al., ICLR 2018).

    Each restart starts from a uniform draw in the eps-ball (from ``generator``, on x's device),
    takes ``steps`` steps of ``step_size`` along the sign of the gradient of the summed float32
    cross-entropy against ``labels``, projecting onto the eps-ball and [0, 1] after every step.
    ``labels`` default to the decision's own clean predictions (as FGM), so no ground truth leaks
    into the attack. Per image, the result is the restart whose last iterate changes the decision
    away from ``labels``, the one with the highest loss among several such, or the highest-loss
    one if none does (see :func:`better_restart`). ``eps == 0`` returns ``x`` unchanged and draws
    nothing.
    """
    _check_budget(eps, steps, step_size)
    if int(restarts) != restarts or restarts < 1:
        raise ValueError(f"restarts must be a positive integer, got {restarts}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    labels = own_predictions(score_fn, x) if labels is None else labels.to(x.device)
    objective = summed_cross_entropy(score_fn, labels)
    best = ascend(objective, x, random_start(x, eps, generator), eps, steps, step_size)
    if restarts == 1:
        return best  # nothing to compare: skip the scoring pass
    best_loss, best_fooled = loss_and_fooled(score_fn, best, labels)
    for _ in range(restarts - 1):
        candidate = ascend(objective, x, random_start(x, eps, generator), eps, steps, step_size)
        loss, fooled = loss_and_fooled(score_fn, candidate, labels)
        better = better_restart(loss, fooled, best_loss, best_fooled)
        best = torch.where(better.view(-1, *[1] * (x.ndim - 1)), candidate, best)
        best_loss = torch.where(better, loss, best_loss)
        best_fooled = best_fooled | fooled
    return best


# ---------------------------------------------------------------------------------------------
# Attacks on a k-NN decision over embeddings
# ---------------------------------------------------------------------------------------------


def _fit_set(train_embeddings: Tensor, train_labels: Tensor) -> Tensor:
    if train_embeddings.ndim != 2 or train_labels.shape != (train_embeddings.shape[0],):
        raise ValueError(f"expected train_embeddings (N, D) and train_labels (N,), got "
                         f"{tuple(train_embeddings.shape)} and {tuple(train_labels.shape)}")
    # The embeddings are targets, never optimised: no graph into whatever produced them.
    return train_embeddings.detach().float()


def nearest_indices(queries: Tensor, fit: Tensor, k: int) -> Tensor:
    """Indices (Q, k) of each query's k most cosine-similar fit rows, found block by block."""
    best_sims = best_idx = None
    for start in range(0, fit.shape[0], SIMILARITY_CHUNK):
        sims = queries @ fit[start:start + SIMILARITY_CHUNK].T
        sims, idx = sims.topk(min(k, sims.shape[1]), dim=1)
        idx = idx + start
        if best_sims is not None:
            sims, keep = torch.cat([best_sims, sims], dim=1).topk(k, dim=1)
            idx = torch.cat([best_idx, idx], dim=1).gather(1, keep)
        best_sims, best_idx = sims, idx
    return best_idx


def class_log_probabilities(scaled_sims: Tensor, members: Tensor) -> Tensor:
    """log sum_{j in class c} softmax_j(scaled_sims): (B, M) similarities / temperature, and
    ``members`` one-hot class rows, (M, C) shared by every query or (B, M, C) per query."""
    # Subtracting the (constant) row maximum keeps exp from overflowing; it cancels exactly.
    weights = (scaled_sims - scaled_sims.detach().amax(dim=1, keepdim=True)).exp()
    mass = (weights.unsqueeze(1) @ members).squeeze(1)
    # A class with no weight (absent, or underflowed at a small temperature) gets log(tiny) and a
    # zero gradient, not log(0) = -inf and NaN gradients.
    log_mass = mass.clamp_min(torch.finfo(mass.dtype).tiny).log()
    return log_mass - log_mass.logsumexp(dim=1, keepdim=True)


def soft_knn_score(model, train_embeddings: Tensor, train_labels: Tensor, num_classes: int,
                   temperature: float, k: int | None = DEFAULT_SOFT_KNN_K) -> ScoreFn:
    """A differentiable surrogate of the k-NN vote over clean training embeddings: images -> logits.

    Class c's logit is log sum_{j in c} softmax_j(cos(embed(image), train_j) / temperature): the
    probability mass the query's similarity softmax puts on class c (the stochastic neighbour
    vote of Goldberger et al., "Neighbourhood Components Analysis", NIPS 2004); the logits are
    log-probabilities. With ``k`` the softmax runs over the query's k nearest training points
    only, re-found at every call (no gradient through the choice), so the surrogate follows the
    local neighbourhood that decides a 3-NN; ``k=None`` uses every training point. As the
    temperature falls, the argmax tends to the 1-NN decision.

    ``model.embed`` must return unit-length embeddings (cosine = dot product) on the device of
    ``train_embeddings``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    fit = _fit_set(train_embeddings, train_labels)
    if k is not None and not 1 <= k <= fit.shape[0]:
        raise ValueError(f"k must be in [1, {fit.shape[0]}] or None, got {k}")
    one_hot = F.one_hot(train_labels.to(fit.device), num_classes).float()

    def score(images: Tensor) -> Tensor:
        queries = model.embed(images)
        # Autocast would run the similarities in bf16 and reorder neighbours.
        with torch.autocast(device_type=queries.device.type, enabled=False):
            queries = queries.float()
            if k is None:
                return class_log_probabilities(queries @ fit.T / temperature, one_hot)
            idx = nearest_indices(queries.detach(), fit, k)
            sims = torch.einsum("bd,bkd->bk", queries, fit[idx])
            return class_log_probabilities(sims / temperature, one_hot[idx])
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


def guide_sample_attack(model, x: Tensor, train_embeddings: Tensor, train_labels: Tensor, eps: float,
                        steps: int, step_size: float, k: int, generator: torch.Generator | None,
                        labels: Tensor | None = None) -> Tensor:
    """The guide-sample attack on a k-NN over embeddings (Sitawarin & Wagner, DLS 2019 and 2020).

    For each image: its current k-NN prediction (``knn_predict`` over the training embeddings,
    with this ``k``), or ``labels`` if given; the nearest other class and its k guides
    (:func:`choose_guides`); then L-inf PGD in pixel space from a uniform random start (drawn from
    ``generator``) that maximises the mean cosine similarity between the image's embedding and its
    guides. For unit vectors this is minimising their mean squared distance, the papers' objective
    without its sigmoid threshold. Returns the last iterate. ``eps == 0`` returns ``x`` unchanged.
    """
    _check_budget(eps, steps, step_size)
    x = x.detach()
    if eps == 0:
        return x.clone()
    fit = _fit_set(train_embeddings, train_labels).to(x.device)
    train_labels = train_labels.to(x.device)
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        clean = model.embed(x).float()
        away_from = knn_predict(fit, train_labels, clean, k) if labels is None else labels.to(x.device)
        guides = choose_guides(clean, fit, train_labels, away_from, k)
        # The mean of cosine similarities to the guides is the similarity to their mean.
        guide_mean = fit[guides].mean(dim=1)

    def mean_similarity_to_guides(images: Tensor) -> Tensor:
        return (model.embed(images).float() * guide_mean).sum()

    return ascend(mean_similarity_to_guides, x, random_start(x, eps, generator), eps, steps, step_size)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def worst_case(correct_by_attack: dict[str, Tensor]) -> Tensor:
    """Per image, correct under every attack: an image is robust only if no attack fooled it.

    ``correct_by_attack`` maps an attack's name to a bool (N,) tensor of correct decisions on its
    adversarial images; the mean of the result is the robust accuracy against all of them.
    """
    if not correct_by_attack:
        raise ValueError("worst_case needs the results of at least one attack")
    first_name, first = next(iter(correct_by_attack.items()))
    for name, correct in correct_by_attack.items():
        if correct.dtype != torch.bool or correct.ndim != 1:
            raise ValueError(f"{name}: expected a bool (N,) tensor of correct decisions, "
                             f"got {correct.dtype} {tuple(correct.shape)}")
        if correct.shape != first.shape:
            raise ValueError(f"{name} covers {correct.shape[0]} images but {first_name} covers {first.shape[0]}")
    stacked = torch.stack([correct.to(first.device) for correct in correct_by_attack.values()])
    return stacked.all(dim=0)
