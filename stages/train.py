"""train@<method>-<seed>: train the ResNet18 the method's way from one seed -> models/<method>-<seed>.pt and
reports/training/<method>-<seed>/ (dvclive: per-epoch plots and the final metrics)."""
import torch

from robust_cifar.compute import Compute, ComputeConfig
from robust_cifar.data.split import load_splits
from robust_cifar.model import ModelConfig, save_model
from robust_cifar.outputs import check_free_space, check_writable
from robust_cifar.params import load_params
from robust_cifar.stage import run_stage
from robust_cifar.training.live_log import EpochLog
from robust_cifar.training.methods.build import build_method
from robust_cifar.training.train import SplitTensors, TrainConfig, TrainingSetup, train_model
from stages import paths


def main(argv: list[str]) -> None:
    params = load_params()
    name, seed = paths.run_arguments(argv)
    method = build_method(name, params)
    model_config, train_config, compute_config = (ModelConfig.from_params(params), TrainConfig.from_params(params),
                                                  ComputeConfig.from_params(params))
    run = paths.run_name(name, seed)
    check_writable(paths.model(name, seed), paths.training_live(name, seed))
    compute = Compute.from_config(compute_config)

    splits, class_names = load_splits(paths.RAW, paths.SPLIT)
    on_device = {name: SplitTensors(torch.from_numpy(split.images).to(compute.device),
                                    torch.from_numpy(split.labels).to(compute.device))
                 for name, split in splits.items() if name in ("train", "val")}
    torch.manual_seed(seed)   # the initial weights
    model = compute.prepare(model_config.build(len(class_names)))
    # the checkpoint is its float32 tensors and a little more: refused now, not after the training
    check_free_space(paths.model(name, seed), 2**20 + sum(4 * tensor.numel() for tensor in model.state_dict().values()))
    setup = TrainingSetup(method=method, train=train_config, compute=compute, seed=seed, num_classes=len(class_names),
                          eval_batch_size=compute_config.eval_batch_size)
    print(f"train@{run}: {len(splits['train'])} images on {compute.describe()}", flush=True)
    log = EpochLog(paths.training_live(name, seed))
    log.describe(run, device=compute.describe(), torch=str(torch.__version__), threads=torch.get_num_threads())
    history = train_model(setup, model, on_device["train"], on_device["val"], on_epoch=log)
    save_model(model, paths.model(name, seed), method=name, seed=seed, class_names=list(class_names))
    log.close()   # last: it lets another training of this run start
    last = history[-1]
    print(f"train@{run}: final train acc {last['train_acc']:.4f}, val acc {last['val_acc']:.4f}")


if __name__ == "__main__":
    run_stage(main)
