"""APGD: projected gradient ascent with momentum and a step size halved on a checkpoint schedule.

Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (Algorithm 1, L-inf). This follows their reference code
(fra31/auto-attack, `autopgd_base.py`, the `Linf` branch) step for step, so that from the same
starting point it gives the same iterates (tests/test_apgd.py compares the two):

- start: ``x + eps * t / max|t|`` with ``t`` uniform in [-1, 1] (each image's largest move is
  exactly eps), clipped to [0, 1];
- step size ``2 eps``; momentum 0.75 from the second step on (the first step has none);
- checkpoints: the first after 22% of the iterations, each later one 3% of the iterations sooner
  than the last, never closer than 6%; at a checkpoint an image's step size halves, and it goes
  back to its best point, if its loss rose in at most ``rho`` (0.75) of the steps since the last
  checkpoint, or if the step size was not halved last time and the best loss has not improved;
- losses: cross-entropy, the difference of logits ratio (DLR, invariant to the logits' scale) and
  its targeted version.

Images are float (B, 3, H, W) in [0, 1]; ``score_fn`` maps images to class scores (B, C). As in
``robust_cifar.evaluation.attacks``: eval mode is the caller's job, only the input is differentiated, losses
are computed in at least float32, and the random start comes from a ``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_cifar.perturbations.pgd import ScoreFn, at_least_float32, project

MOMENTUM = 0.75           # alpha in the paper: the weight of the new step against the last move
RHO = 0.75                # a checkpoint halves the step size if the loss rose in at most this share of steps
FIRST_CHECKPOINT = 0.22   # of the iterations
CHECKPOINT_DECAY = 0.03   # each interval this share of the iterations shorter than the last ...
MIN_INTERVAL = 0.06       # ... but never shorter than this share
DLR_EPSILON = 1e-12       # keeps DLR's denominator off zero when the top logits tie
NORM_EPSILON = 1e-12      # keeps the start's scaling finite for an all-zero draw

Loss = Callable[[Tensor, Tensor], Tensor]   # (logits (B, C), labels (B,)) -> per-image loss (B,)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def dlr(logits: Tensor, labels: Tensor) -> Tensor:
    """-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3): the margin to the best other class, scaled by the
    spread of the top three scores (pi1 >= pi2 >= pi3 the sorted scores). Needs 3 classes or more."""
    ordered, order = logits.sort(dim=1)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    top_is_true = order[:, -1] == labels
    best_other = torch.where(top_is_true, ordered[:, -2], ordered[:, -1])
    return -(true - best_other) / (ordered[:, -1] - ordered[:, -3] + DLR_EPSILON)


def targeted_dlr(target: Tensor) -> Loss:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): pulls the score of class ``target`` above the
    true class's. Needs 4 classes or more."""
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        ordered = logits.sort(dim=1).values
        true, aimed = logits.gather(1, labels[:, None]).squeeze(1), logits.gather(1, target[:, None]).squeeze(1)
        return -(true - aimed) / (ordered[:, -1] - (ordered[:, -3] + ordered[:, -4]) / 2 + DLR_EPSILON)
    return loss


def checkpoint_intervals(iterations: int) -> tuple[int, int, int]:
    """(first interval, decay, minimum interval) in iterations, as the reference rounds them."""
    return (max(int(FIRST_CHECKPOINT * iterations), 1), max(int(CHECKPOINT_DECAY * iterations), 1),
            max(int(MIN_INTERVAL * iterations), 1))


def apgd_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """The reference's random start: a uniform direction scaled so its largest entry is eps, in [0, 1]."""
    t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    largest = t.abs().flatten(1).amax(dim=1).view(-1, *[1] * (x.ndim - 1))
    return (x + eps * (t / (largest + NORM_EPSILON))).clamp(0, 1)


@dataclass
class APGDResult:
    best_loss_images: Tensor   # per image, the iterate of the highest loss
    fooling_images: Tensor     # per image, the last iterate the score got wrong (the start if none)
    fooled: Tensor             # bool (B,): whether any iterate (the start included) was misclassified
    best_loss: Tensor          # (B,)


def _loss_and_gradient(score_fn: ScoreFn, loss: Loss, x_adv: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.enable_grad():
        x_in = x_adv.detach().requires_grad_(True)
        logits = at_least_float32(score_fn(x_in))
        per_image = loss(logits, labels)
        (gradient,) = torch.autograd.grad(per_image.sum(), x_in)
    return per_image.detach(), gradient.detach(), logits.detach().argmax(dim=1) != labels


def apgd_run(score_fn: ScoreFn, x: Tensor, labels: Tensor, eps: float, iterations: int, loss: Loss,
             start: Tensor) -> APGDResult:
    """One run of APGD from ``start`` (a point of the eps-ball around x in [0, 1])."""
    x = x.detach()
    rows = (-1, *[1] * (x.ndim - 1))
    x_adv = start.detach().clone()
    x_best, fooling_images = x_adv.clone(), x_adv.clone()
    loss_steps = torch.zeros(iterations, len(x), device=x.device)

    loss_now, gradient, fooled = _loss_and_gradient(score_fn, loss, x_adv, labels)
    gradient_best, best_loss = gradient.clone(), loss_now.clone()
    step_size = torch.full((len(x),), 2 * eps, device=x.device, dtype=x.dtype)
    interval, decay, min_interval = checkpoint_intervals(iterations)
    since_checkpoint = 0
    best_loss_at_checkpoint = best_loss.clone()
    halved_at_checkpoint = torch.ones_like(best_loss)
    x_previous = x_adv.clone()

    for i in range(iterations):
        move = x_adv - x_previous
        x_previous = x_adv.clone()
        momentum = MOMENTUM if i > 0 else 1.0
        stepped = project(x_adv + step_size.view(rows) * gradient.sign(), x, eps)
        x_adv = project(x_adv + (stepped - x_adv) * momentum + move * (1 - momentum), x, eps)

        loss_now, gradient, fooled_now = _loss_and_gradient(score_fn, loss, x_adv, labels)
        fooled = fooled | fooled_now
        fooling_images[fooled_now] = x_adv[fooled_now]
        loss_steps[i] = loss_now
        improved = loss_now > best_loss
        x_best[improved] = x_adv[improved]
        gradient_best[improved] = gradient[improved]
        best_loss = torch.where(improved, loss_now, best_loss)

        since_checkpoint += 1
        if since_checkpoint == interval:
            # the reference counts rises over the last `interval` steps, the one before the first
            # step included (a row of zeros, by Python's negative index): kept, to follow it exactly
            rises = sum((loss_steps[i - j] > loss_steps[i - j - 1]).float() for j in range(interval))
            oscillating = rises <= interval * RHO
            stalled = (1 - halved_at_checkpoint).bool() & (best_loss_at_checkpoint >= best_loss)
            halve = oscillating | stalled
            halved_at_checkpoint = halve.float()
            best_loss_at_checkpoint = best_loss.clone()
            step_size = torch.where(halve, step_size / 2, step_size)
            x_adv[halve] = x_best[halve]
            gradient[halve] = gradient_best[halve]
            interval = max(interval - decay, min_interval)
            since_checkpoint = 0
    return APGDResult(x_best, fooling_images, fooled, best_loss)


def apgd(score_fn: ScoreFn, x: Tensor, labels: Tensor, eps: float, iterations: int, loss: Loss,
         generator: torch.Generator | None) -> APGDResult:
    """APGD from the reference's random start (drawn from ``generator``)."""
    return apgd_run(score_fn, x, labels, eps, iterations, loss, apgd_start(x.detach(), eps, generator))


def target_classes(score_fn: ScoreFn, x: Tensor, labels: Tensor, count: int) -> list[Tensor]:
    """The classes APGD-T aims at, per image: the ``count`` highest-scoring classes on the clean
    image other than the true one (the reference takes ranks 2 to count + 1 of images it classifies
    correctly; for an image it gets wrong the top class is taken instead of the true one)."""
    with torch.no_grad():
        scores = at_least_float32(score_fn(x.detach()))
    scores = scores.scatter(1, labels[:, None], float("-inf"))   # never the true class
    if not 1 <= count < scores.shape[1]:
        raise ValueError(f"APGD-T aims at 1 to {scores.shape[1] - 1} classes, got {count}")
    ranked = scores.argsort(dim=1, descending=True)
    return [ranked[:, rank] for rank in range(count)]
