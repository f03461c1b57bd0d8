"""embed@<method>: normalized embeddings and head logits of train / val / test, clean and perturbed
(white-box, transfer from the baseline, and each perturbation alone on test) -> data/embeddings/<method>.npz"""
import numpy as np
import torch

from robust_cifar.compute import Compute
from robust_cifar.inference import embed_and_classify
from robust_cifar.methods import METHODS, class_means, decision_score
from robust_cifar.model import load_model
from robust_cifar.npz import save_npz
from robust_cifar.outputs import run_stage
from robust_cifar.params import load_params
from robust_cifar.perturb import load_plans
from robust_cifar.robustness import conditions_for, evaluate_conditions, flatten
from robust_cifar.splits import SPLITS, load_splits
from stages import paths


def main(argv: list[str]) -> None:
    params = load_params()
    method = METHODS[params.method(argv[0] if argv else "")]
    fgm_eps, compute_config = params.fgm_eps(), params.compute()
    temperature = None if method.has_head else params.attack_temperature()
    compute = Compute.create(compute_config.device, compute_config.fast)
    batch_size = compute_config.eval_batch_size

    model, _ = load_model(paths.model(method.name), compute.device)
    model = compute.prepare(model)
    baseline = None
    if method.name != "baseline":
        baseline = compute.prepare(load_model(paths.model("baseline"), compute.device)[0])
    plans = load_plans(paths.PLAN)
    splits, class_names = load_splits(paths.RAW, paths.SPLIT)
    images = {name: torch.from_numpy(split.images).to(compute.device) for name, split in splits.items()}

    clean_train = embed_and_classify(model, images["train"], compute, batch_size)
    means = class_means(clean_train[0], torch.from_numpy(splits["train"].labels).to(compute.device),
                        model.config["num_classes"])
    score = decision_score(method, model, means, temperature)
    arrays = {"class_names": np.array(class_names)}
    for name in SPLITS:
        results = evaluate_conditions(model, images[name], plans[name], fgm_eps, score, baseline, compute, batch_size,
                                      conditions_for(name), clean=clean_train if name == "train" else None)
        arrays.update(flatten(name, results))
        arrays[f"{name}.labels"] = splits[name].labels
        print(f"embed@{method.name}: {name} ({len(splits[name])} images) x {', '.join(results)}")
    save_npz(paths.embeddings(method.name), arrays)


if __name__ == "__main__":
    run_stage(main)
