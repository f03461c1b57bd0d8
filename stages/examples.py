"""examples: test images next to their perturbed versions (the plan's draws, FGM against the baseline),
labelled by which perturbations hit them -> reports/examples.png"""
import numpy as np
import torch

from robust_cifar.compute import Compute
from robust_cifar.data.split import load_splits
from robust_cifar.model import ModelConfig, load_model
from robust_cifar.outputs import check_writable, save_figure
from robust_cifar.params import load_params
from robust_cifar.perturbations.perturb import PerturbDraw, PerturbSettings, apply_perturbations, load_plans, plan_draw
from robust_cifar.reporting.examples import perturbation_examples
from robust_cifar.stage import run_stage
from robust_cifar.training.methods import REFERENCE_METHOD
from stages import paths

SHOWN = 8


def pick_examples(gates: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` test images: every combination of perturbations that occurs (the most perturbed
    first when there are more than `count`), each shown on an image of a class no other row shows
    where the plan allows it, then one image of each class not yet shown.

    Image-folder test sets are sorted by class, so the first indices would all be airplanes: the
    combinations are matched to distinct classes (a bipartite matching, so a rare combination
    found only in one class still gets that class). Rows come back ordered by how many
    perturbations hit the image (the unperturbed one first), then by class.
    """
    gates, labels = np.asarray(gates, dtype=bool), np.asarray(labels)
    combinations = gates @ (1 << np.arange(gates.shape[1]))
    hits = gates.sum(axis=1)
    wanted = sorted(set(combinations.tolist()), key=lambda c: (-bin(c).count("1"), -c))[:count]
    first = {}   # (combination, class) -> its first image
    for index, key in enumerate(zip(combinations.tolist(), labels.tolist())):
        first.setdefault(key, index)
    classes_with = {c: sorted((k for cc, k in first if cc == c), key=lambda k: first[(c, k)]) for c in wanted}
    matched: dict[int, int] = {}   # class -> combination

    def augment(combination: int, tried: set) -> bool:
        for label in classes_with[combination]:
            if label not in tried:
                tried.add(label)
                if label not in matched or augment(matched[label], tried):
                    matched[label] = combination
                    return True
        return False

    for combination in wanted:
        augment(combination, set())
    chosen = [first[(combination, label)] for label, combination in matched.items()]
    covered = set(matched.values())
    # a combination whose every class is taken is still shown, on a repeated class
    chosen += [int(np.flatnonzero(combinations == c)[0]) for c in wanted if c not in covered]
    # spare rows: classes not yet shown, each by its most perturbed image
    for label in sorted(set(labels.tolist()) - {labels[i] for i in chosen}):
        if len(chosen) >= count:
            break
        members = np.flatnonzero(labels == label)
        chosen.append(int(members[np.argmax(hits[members])]))
    taken = set(chosen)
    chosen += [index for index in range(len(gates)) if index not in taken][:max(0, count - len(chosen))]
    return np.array(sorted(chosen[:count], key=lambda i: (hits[i], combinations[i], labels[i], i)), dtype=int)


def main(argv: list[str]) -> None:
    paths.no_arguments(argv)
    params = load_params()
    check_writable(paths.EXAMPLES)
    perturb = PerturbSettings.from_params(params)
    compute = Compute.fp32_from_params(params)
    model_config = ModelConfig.from_params(params)
    splits, class_names = load_splits(paths.RAW, paths.SPLIT)
    plan = load_plans(paths.PLAN, {split: len(images) for split, images in splits.items()},
                      drawn_with=(params.seed("plan"), perturb))["test"]
    run = (REFERENCE_METHOD, params.seed("figures"))
    model, _ = load_model(paths.model(*run), compute.device, expect=model_config, num_classes=len(class_names),
                          run=run)
    shown = pick_examples(plan.gates, splits["test"].labels, SHOWN)

    clean = compute.images(torch.from_numpy(splits["test"].images[shown]))
    draw = PerturbDraw.concat([plan_draw(plan, index, index + 1, tuple(clean.shape[1:]), compute.device)
                               for index in shown])
    perturbed = apply_perturbations(clean, draw, plan.with_fgm(perturb.fgm_eps), score_fn=model)
    figure = perturbation_examples(clean.cpu().numpy(), perturbed.cpu().numpy(), plan.gates[shown],
                                   splits["test"].labels[shown], class_names)
    save_figure(figure, paths.EXAMPLES, dpi=120)
    print(f"examples: test images {shown.tolist()} -> {paths.EXAMPLES}")


if __name__ == "__main__":
    run_stage(main)
