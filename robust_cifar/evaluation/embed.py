"""Embeddings and logits of every split under every evaluation condition (see robust_cifar.conditions)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from robust_cifar.compute import Compute
from robust_cifar.conditions import KINDS
from robust_cifar.evaluation.inference import BatchTransform, embed_and_classify
from robust_cifar.model import CifarResNet18
from robust_cifar.perturbations.perturb import ScoreFn, SplitPlan, apply_perturbations, plan_draw


def plan_transform(plan: SplitPlan, fgm_eps: float, score_fn: Optional[ScoreFn],
                   only: Optional[str] = None) -> BatchTransform:
    settings = plan.with_fgm(fgm_eps)

    def transform(images: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        draw = plan_draw(plan, start, stop, tuple(images.shape[1:]), images.device)
        return apply_perturbations(images, draw.only(only) if only else draw, settings, score_fn=score_fn)
    return transform


def evaluate_conditions(model: CifarResNet18, images: torch.Tensor, plan: SplitPlan, fgm_eps: float,
                        score_fn: ScoreFn, transfer_score_fn: Optional[ScoreFn], compute: Compute, batch_size: int,
                        conditions: tuple[str, ...], clean: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                        progress: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{condition: (embeddings, logits)} for one split; `progress`: a bar with an ETA per condition.

    `transfer_score_fn=None` means the evaluated model is the transfer source itself (the
    baseline), so its transfer condition is its white-box condition.
    """
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    transforms: dict[str, Optional[BatchTransform]] = {
        "clean": None,
        "perturbed": plan_transform(plan, fgm_eps, score_fn),
        "transfer": plan_transform(plan, fgm_eps, transfer_score_fn) if transfer_score_fn is not None else None,
        **{kind: plan_transform(plan, fgm_eps, score_fn, only=kind) for kind in KINDS},
    }
    for condition in conditions:
        if condition == "clean" and clean is not None:
            results[condition] = clean
        elif condition == "transfer" and transfer_score_fn is None:
            results[condition] = results["perturbed"]
        else:
            results[condition] = embed_and_classify(model, images, compute, batch_size, transforms[condition],
                                                    progress=progress and condition)
    return results


def flatten(split: str, results: dict[str, tuple[torch.Tensor, torch.Tensor]], with_logits: bool) -> dict[str, np.ndarray]:
    """Arrays named `<split>.<condition>.embeddings` (and `.logits` for a model whose head decides;
    an untrained head's logits are left out, so nothing can score them by mistake)."""
    arrays = {}
    for condition, (embeddings, logits) in results.items():
        arrays[f"{split}.{condition}.embeddings"] = embeddings.cpu().numpy()
        if with_logits:
            arrays[f"{split}.{condition}.logits"] = logits.cpu().numpy()
    return arrays

