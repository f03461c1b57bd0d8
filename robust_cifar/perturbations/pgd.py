"""Projected gradient ascent in an L-inf ball: the machinery of every gradient attack here, and PGD.

PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018) is both
an evaluation attack (robust_cifar.evaluation.attacks, the robustness stage) and a training-time
perturbation (pgd_adversarial), so it lives with the perturbations and neither imports the other.
Images are float tensors (B, 3, H, W) in [0, 1]; every step stays within eps of the input and in [0, 1];
gradients are w.r.t. the input only, under ``torch.enable_grad()``, losses in at least float32.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_cifar.perturbations.perturb import ScoreFn

Objective = Callable[[Tensor], Tensor]  # images -> a scalar the attack maximises


# ---------------------------------------------------------------------------------------------
# The shared L-inf machinery
# ---------------------------------------------------------------------------------------------


def check_budget(eps: float, steps: int, step_size: float) -> None:
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


def at_least_float32(t: Tensor) -> Tensor:
    # Under autocast logits may be bf16, and a bf16 cross-entropy loses small gradients; a float64
    # model (the tests' exact reference) keeps its precision.
    return t.to(torch.promote_types(t.dtype, torch.float32))


# ---------------------------------------------------------------------------------------------
# FGM and PGD
# ---------------------------------------------------------------------------------------------


def summed_cross_entropy(score_fn: ScoreFn, labels: Tensor) -> Objective:
    # Summed, not averaged, so an image's gradient does not shrink with the batch size.
    return lambda images: F.cross_entropy(at_least_float32(score_fn(images)), labels, reduction="sum")


def pgd(score_fn: ScoreFn, x: Tensor, labels: Tensor, eps: float, steps: int, step_size: float,
        generator: torch.Generator | None) -> Tensor:
    """Untargeted L-inf PGD (Madry et al., ICLR 2018), one run: a uniform start in the eps-ball
    (from ``generator``, on x's device), then ``steps`` steps of ``step_size`` along the sign of the
    gradient of the summed float32 cross-entropy against ``labels``, each projected onto the
    eps-ball and [0, 1]; returns the last iterate. ``eps == 0`` returns ``x`` unchanged and draws
    nothing."""
    check_budget(eps, steps, step_size)
    x = x.detach()
    if eps == 0:
        return x.clone()
    objective = summed_cross_entropy(score_fn, labels.to(x.device))
    return ascend(objective, x, random_start(x, eps, generator), eps, steps, step_size)
