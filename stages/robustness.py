"""robustness@<method>-<seed>: test accuracy under an eps sweep of FGM and PGD and under attacks aimed at
the 3-NN, with per-image worst cases -> reports/robustness/<method>/<seed>.json"""
import numpy as np
import torch

from robust_cifar.compute import Compute, ComputeConfig
from robust_cifar.methods import build_method
from robust_cifar.model import load_model
from robust_cifar.npz import load_npz
from robust_cifar.outputs import check_writable, write_json
from robust_cifar.params import load_params
from robust_cifar.robust_accuracy import AttackConfig, Decisions, robust_accuracy
from robust_cifar.scoring import knn_k
from robust_cifar.splits import load_splits
from robust_cifar.stage import run_stage
from stages import paths


def evenly_spaced(n: int, limit: int) -> np.ndarray:
    """The same test images for every model: all of them, or `limit` spread evenly (image-folder test
    sets are sorted by class, so this keeps the classes balanced)."""
    return np.arange(n) if limit == 0 or limit >= n else np.linspace(0, n - 1, limit).round().astype(int)


def main(argv: list[str]) -> None:
    params = load_params()
    name, seed = paths.run_arguments(argv)
    method = build_method(name, params)
    config, compute_config, k = AttackConfig.from_params(params), ComputeConfig.from_params(params), knn_k(params)
    check_writable(paths.robustness(name, seed))
    compute = Compute.from_config(compute_config)
    run = paths.run_name(name, seed)

    model = compute.prepare(load_model(paths.model(name, seed), compute.device)[0])
    transfer_source = (None if name == paths.TRANSFER_SOURCE else
                       compute.prepare(load_model(paths.model(paths.TRANSFER_SOURCE, seed), compute.device)[0]))
    arrays = load_npz(paths.embeddings(name, seed), f"embed@{run}")
    fit = torch.from_numpy(arrays["train.clean.embeddings"]).to(compute.device)
    fit_labels = torch.from_numpy(arrays["train.labels"]).to(compute.device)
    splits, _ = load_splits(paths.RAW, paths.SPLIT)
    chosen = evenly_spaced(len(splits["test"]), config.test_images)
    images = torch.from_numpy(splits["test"].images[chosen]).to(compute.device)
    labels = torch.from_numpy(splits["test"].labels[chosen]).to(compute.device)

    reference = method.objective.reference(fit, fit_labels, model.config["num_classes"])
    decisions = Decisions(model, fit, fit_labels, k, method.has_head)
    result = robust_accuracy(config, decisions, method.objective.score_fn(model, reference), transfer_source,
                             images, labels, compute, compute_config.eval_batch_size, seed,
                             progress=lambda message: print(f"robustness@{run}: {message}", flush=True))
    write_json(paths.robustness(name, seed), result)
    print(f"robustness@{run}: robust test accuracy {result['robust']} on {len(labels)} images")


if __name__ == "__main__":
    run_stage(main)
