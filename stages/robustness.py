"""robustness@<method>-<seed>: robust test accuracy of the head and the 3-NN under every registered attack
(true labels, fp32, cumulative over the eps sweep; the 3-NN's neighbours, the clean training images, embedded
here in fp32) -> reports/robustness/<method>/<seed>.json, and per test image whether each decision is right
clean and robust at the study's eps -> reports/robustness/<method>/<seed>.csv"""
from dataclasses import replace

import numpy as np
import torch

from robust_cifar.compute import Compute, ComputeConfig
from robust_cifar.data.split import load_splits
from robust_cifar.conditions import knn_k
from robust_cifar.evaluation.inference import embed_and_classify
from robust_cifar.evaluation.robustness import RobustnessConfig, Victim, percentages, robust_accuracy
from robust_cifar.model import ModelConfig, load_model
from robust_cifar.outputs import check_writable, write_csv, write_json
from robust_cifar.params import load_params
from robust_cifar.reporting.results import KNN_K, RUN, stamped
from robust_cifar.stage import run_stage
from robust_cifar.training.methods import REFERENCE_METHOD
from robust_cifar.training.methods.build import build_method
from stages import paths


def evenly_spaced(n: int, limit: int) -> np.ndarray:
    """The same test images for every model: all of them, or `limit` spread evenly (image-folder test
    sets are sorted by class, so this keeps the classes balanced)."""
    return np.arange(n) if limit == 0 or limit >= n else np.linspace(0, n - 1, limit).round().astype(int)


def main(argv: list[str]) -> None:
    params = load_params()
    name, seed = paths.run_arguments(argv)
    method = build_method(name, params)
    config, compute_config, k = RobustnessConfig.from_params(params), ComputeConfig.from_params(params), knn_k(params)
    model_config = ModelConfig.from_params(params)
    check_writable(paths.robustness(name, seed), paths.robustness_per_image(name, seed))
    # float32 throughout: an attack or a decision in bf16 would measure another model
    compute = Compute.from_config(replace(compute_config, fast=False))
    run = paths.run_name(name, seed)

    splits, class_names = load_splits(paths.RAW, paths.SPLIT)
    expected = dict(expect=model_config, num_classes=len(class_names))   # not a checkpoint of other params or data
    model = compute.prepare(load_model(paths.model(name, seed), compute.device, run=(name, seed), **expected)[0])
    transfer_source = (None if name == REFERENCE_METHOD else compute.prepare(
        load_model(paths.model(REFERENCE_METHOD, seed), compute.device, run=(REFERENCE_METHOD, seed),
                   **expected)[0]))
    # the k-NN's neighbours in float32 too, embedded here: the embed stage's are bf16 where compute.fast is on
    fit = embed_and_classify(model, torch.from_numpy(splits["train"].images).to(compute.device), compute,
                             compute_config.eval_batch_size, progress=f"train clean (the {k}-NN's neighbours)")[0]
    fit_labels = torch.from_numpy(splits["train"].labels).to(compute.device)
    chosen = evenly_spaced(len(splits["test"]), config.test_images)
    images = torch.from_numpy(splits["test"].images[chosen]).to(compute.device)
    labels = torch.from_numpy(splits["test"].labels[chosen]).to(compute.device)

    num_classes = model.config["num_classes"]
    victim = Victim(model, method.objective.score_fn(model, method.objective.reference(fit, fit_labels, num_classes)),
                    method.has_head, fit, fit_labels, k, num_classes, transfer_source)
    report, per_image = robust_accuracy(config, victim, images, labels, compute, compute_config.eval_batch_size, seed,
                                        progress=lambda message: print(f"robustness@{run}: {message}", flush=True))
    write_json(paths.robustness(name, seed), stamped({KNN_K: k, **report}, RUN, run))
    columns = {key: value.cpu().numpy().astype(int) for key, value in per_image.items()}
    write_csv(paths.robustness_per_image(name, seed),
              [{"test_index": int(index), "label": int(label), **{key: int(values[row]) for key, values in columns.items()}}
               for row, (index, label) in enumerate(zip(chosen, labels.cpu().numpy()))])
    print(f"robustness@{run}: robust test accuracy at {config.study_eps_255:g}/255 {percentages(report['robust'], k)} "
          f"(clean {percentages(report['clean'], k)}) on {len(labels)} images")


if __name__ == "__main__":
    run_stage(main)
