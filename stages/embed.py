"""embed@<method>-<seed>: normalized embeddings (and head logits, for a method with a head) of train / val / test,
clean and perturbed (white-box, transfer from the baseline, and each perturbation alone on test)
-> data/embeddings/<method>-<seed>.npz"""
import numpy as np
import torch

from robust_cifar.compute import Compute, ComputeConfig
from robust_cifar.conditions import SPLITS, conditions_for
from robust_cifar.data.split import load_splits
from robust_cifar.evaluation.embed import evaluate_conditions, flatten
from robust_cifar.evaluation.inference import embed_and_classify
from robust_cifar.model import ModelConfig, load_model
from robust_cifar.npz import save_npz
from robust_cifar.outputs import check_free_space, check_writable
from robust_cifar.params import load_params
from robust_cifar.perturbations.perturb import PerturbSettings, load_plans
from robust_cifar.stage import run_stage
from robust_cifar.training.methods import REFERENCE_METHOD
from robust_cifar.training.methods.build import build_method
from stages import paths


def main(argv: list[str]) -> None:
    params = load_params()
    name, seed = paths.run_arguments(argv)
    method = build_method(name, params)
    perturb, compute_config = PerturbSettings.from_params(params), ComputeConfig.from_params(params)
    model_config = ModelConfig.from_params(params)
    check_writable(paths.embeddings(name, seed))
    compute = Compute.from_config(compute_config)
    batch_size = compute_config.eval_batch_size

    splits, class_names = load_splits(paths.RAW, paths.SPLIT)
    plans = load_plans(paths.PLAN, {split: len(images) for split, images in splits.items()},
                       drawn_with=(params.seed("plan"), perturb))   # not a plan of other params
    expected = dict(expect=model_config, num_classes=len(class_names))   # not a checkpoint of other params or data
    model = compute.prepare(load_model(paths.model(name, seed), compute.device, run=(name, seed), **expected)[0])
    # the transfer source (of the same seed) has no transfer condition of its own: it is its white-box one
    transfer_source = (None if name == REFERENCE_METHOD else compute.prepare(
        load_model(paths.model(REFERENCE_METHOD, seed), compute.device, run=(REFERENCE_METHOD, seed),
                   **expected)[0]))
    images = {name: torch.from_numpy(split.images).to(compute.device) for name, split in splits.items()}
    # float32 embeddings (and logits) per image and condition, and the labels: refused now if they cannot fit
    per_image = 4 * (model_config.embedding_dim + (len(class_names) if method.has_head else 0))
    check_free_space(paths.embeddings(name, seed), 2**20 + sum(
        len(splits[split]) * (per_image * len(conditions_for(split)) + 8) for split in SPLITS))

    # minutes of work on a CPU: a bar with an ETA per split and condition
    clean_train = embed_and_classify(model, images["train"], compute, batch_size, progress="train clean")
    train_labels = torch.from_numpy(splits["train"].labels).to(compute.device)
    reference = method.objective.reference(clean_train[0], train_labels, model.config["num_classes"])
    score = method.objective.score_fn(model, reference)
    arrays = {"run": np.array(paths.run_name(name, seed)), "class_names": np.array(class_names)}
    for split in SPLITS:
        results = evaluate_conditions(model, images[split], plans[split], perturb.fgm_eps, score, transfer_source, compute,
                                      batch_size, conditions_for(split), clean=clean_train if split == "train" else None,
                                      progress=True)
        arrays.update(flatten(split, results, with_logits=method.has_head))
        arrays[f"{split}.labels"] = splits[split].labels
        print(f"embed@{paths.run_name(name, seed)}: {split} ({len(splits[split])} images) x {', '.join(results)}")
    save_npz(paths.embeddings(name, seed), arrays)


if __name__ == "__main__":
    run_stage(main)
