"""examples: test images next to their perturbed versions (the plan's draws, FGM against the baseline),
labelled by which perturbations hit them -> reports/examples.png"""
import numpy as np
import torch

from robust_cifar.compute import Compute, ComputeConfig
from robust_cifar.figures import perturbation_examples
from robust_cifar.model import load_model
from robust_cifar.outputs import save_figure
from robust_cifar.params import load_params
from robust_cifar.perturb import PerturbDraw, apply_perturbations, fgm_eps_from_params, load_plans, plan_draw
from robust_cifar.splits import load_splits
from robust_cifar.stage import run_stage
from stages import paths

SHOWN = 8


def pick_examples(gates: np.ndarray, count: int) -> np.ndarray:
    """Images covering as many different combinations of perturbations as there are, most perturbed first."""
    combinations = gates @ np.array([1, 2, 4])
    chosen = [int(np.flatnonzero(combinations == combination)[0]) for combination in sorted(set(combinations), reverse=True)]
    rest = [index for index in range(len(gates)) if index not in chosen]
    return np.array(sorted((chosen + rest)[:count]))


def main(argv: list[str]) -> None:
    params = load_params()
    fgm_eps = fgm_eps_from_params(params)
    compute = Compute.create(ComputeConfig.device_from_params(params), fast=False)
    plan = load_plans(paths.PLAN)["test"]
    splits, class_names = load_splits(paths.RAW, paths.SPLIT)
    model, _ = load_model(paths.model(paths.TRANSFER_SOURCE, params.seed("figures")), compute.device)
    shown = pick_examples(plan.gates, SHOWN)

    clean = compute.images(torch.from_numpy(splits["test"].images[shown]))
    draw = PerturbDraw.concat([plan_draw(plan, index, index + 1, tuple(clean.shape[1:]), compute.device)
                               for index in shown])
    perturbed = apply_perturbations(clean, draw, plan.with_fgm(fgm_eps), score_fn=model)
    figure = perturbation_examples(clean.cpu().numpy(), perturbed.cpu().numpy(), plan.gates[shown],
                                   splits["test"].labels[shown], class_names)
    save_figure(figure, paths.EXAMPLES, dpi=120)
    print(f"examples: test images {shown.tolist()} -> {paths.EXAMPLES}")


if __name__ == "__main__":
    run_stage(main)
