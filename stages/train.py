"""train@<method>: train the ResNet18 with the method's objective -> models/<method>.pt and per-epoch logs."""
import torch

from robust_cifar.compute import Compute
from robust_cifar.methods import METHODS
from robust_cifar.model import CifarResNet18, save_model
from robust_cifar.outputs import run_stage, write_csv
from robust_cifar.params import load_params
from robust_cifar.splits import load_splits
from robust_cifar.training import SplitTensors, TrainingSetup, train_model
from stages import paths

EPOCH_COLUMNS = ["epoch", "train_loss", "train_acc", "lr", "seconds"]
VALIDATION_COLUMNS = ["epoch", "val_loss", "val_acc", "val_perturbed_acc", "val_seconds"]


def main(argv: list[str]) -> None:
    params = load_params()
    method = METHODS[params.method(argv[0] if argv else "")]
    model_config, compute_config = params.model(), params.compute()
    setup_args = dict(train=params.train(method.name), seed=params.seed("train"),
                      perturb=params.perturb() if method.perturb_on_the_fly else None,
                      angular=params.angular() if method.balanced_batches else None,
                      eval_batch_size=compute_config.eval_batch_size)
    compute = Compute.create(compute_config.device, compute_config.fast)

    splits, class_names = load_splits(paths.RAW, paths.SPLIT)
    on_device = {name: SplitTensors(torch.from_numpy(split.images).to(compute.device),
                                    torch.from_numpy(split.labels).to(compute.device))
                 for name, split in splits.items() if name in ("train", "val")}
    torch.manual_seed(setup_args["seed"])   # the initial weights
    model = compute.prepare(CifarResNet18(model_config.width, model_config.embedding_dim, len(class_names),
                                          model_config.dropout))
    setup = TrainingSetup(method=method, compute=compute, num_classes=len(class_names), **setup_args)
    print(f"train@{method.name}: {len(splits['train'])} images on {compute.describe()}")
    history = train_model(setup, model, on_device["train"], on_device["val"])

    save_model(model, paths.model(method.name), method=method.name, class_names=list(class_names))
    write_csv(paths.training_log(method.name), history, EPOCH_COLUMNS)
    validated = [row for row in history if "val_acc" in row]
    columns = [c for c in VALIDATION_COLUMNS if c in validated[-1]]
    write_csv(paths.validation_log(method.name), validated, columns)
    last = history[-1]
    print(f"train@{method.name}: final train acc {last['train_acc']:.4f}, val acc {last['val_acc']:.4f}")


if __name__ == "__main__":
    run_stage(main)
