"""Benchmark: how fast this machine trains and evaluates, against a reference loop in the notebook's style.

    python -m tools.bench            # a few seconds per measurement
    python -m tools.bench --long     # steadier numbers
    python -m tools.bench --device cpu --fp32

Prints images/s of each method's training step (the project's own, replayed as CUDA graphs where the
pipeline does; on CUDA the eager step too, for the ratio), of evaluation
and of the FGM attack; the same ResNet18 and batch trained by a reference loop written like the
original notebook (DataLoader over a Dataset, normalization outside the model, per-batch
perturbation calls, fp32) and the ratio; wall time of the 3-NN and UMAP work at the study's
sizes; and, on CUDA, model FLOP utilisation against the chip's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F

from robust_cifar.compute import DEVICE, Compute
from robust_cifar.errors import DeviceError, UserError
from robust_cifar.evaluation.inference import embed_and_classify
from robust_cifar.evaluation.knn import knn_predict
from robust_cifar.model import CIFAR_MEAN, CIFAR_STD, CifarResNet18
from robust_cifar.params import load_params
from robust_cifar.perturbations.perturb import fgm
from robust_cifar.signals import run_tool
from robust_cifar.training.methods.registry import REFERENCE_METHOD, REGISTRY, build_method, shaped_like
from robust_cifar.training.methods.batches import ShuffledBatches
from robust_cifar.training.methods.drawn_perturbations import DrawnPerturbations
from robust_cifar.training.methods.objectives import CrossEntropyHead
from robust_cifar.training.train import TrainConfig, TrainingSetup, make_optimizer, training_step, uses_cuda_graphs

# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts), for model FLOP utilisation.
BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(step: Callable[[], int], device: torch.device, seconds: float, warmup: int = 2,
               min_steps: int = 3) -> float:
    """Images per second of `step` (which returns how many images it processed) after warm-up."""
    for _ in range(warmup):
        step()
    synchronize(device)
    images, steps, started = 0, 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - started < seconds:
        images += step()
        steps += 1
    synchronize(device)
    return images / (time.perf_counter() - started)


def synthetic_split(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % 10
    return images.to(device), labels.to(device)


def study_method(name: str, batch: int):
    """The method as params.yaml defines it, with shuffled batches resized to `batch`."""
    method = build_method(name, load_params())
    if isinstance(method.batch_order, ShuffledBatches):
        method = dataclasses.replace(method, batch_order=ShuffledBatches(batch))
    return method


def project_training(method_name: str, compute: Compute, batch: int, seconds: float) -> tuple[float, bool]:
    """(images/s of the pipeline's training step, whether that step was replayed as CUDA graphs)."""
    method = study_method(method_name, batch)
    batch = len(method.batch_order.epoch(torch.arange(batch * 8) % 10, torch.Generator().manual_seed(0))[0])
    config = TrainConfig(epochs=1, lr=0.01, momentum=0.9, weight_decay=0.0, lr_factor=0.05, lr_patience=2,
                         lr_schedule_on="epoch_mean", val_every=1)
    setup = TrainingSetup(method=method, train=config, compute=compute, seed=0, num_classes=10, eval_batch_size=1024)
    model = compute.prepare(CifarResNet18()).train()
    graphed = uses_cuda_graphs(setup)
    optimizer = make_optimizer(model, config, graphed_on=compute.device if graphed else None)
    images, labels = synthetic_split(batch * 8, compute.device)
    pipeline_step = training_step(setup, model, optimizer, torch.Generator(device=compute.device).manual_seed(0))
    step_count = [0]

    def step() -> int:
        start = (step_count[0] % 8) * batch
        step_count[0] += 1
        pipeline_step(images[start:start + batch], labels[start:start + batch])
        return batch
    # graphs are captured after a few eager steps of each shape: warm up past them
    return throughput(step, compute.device, seconds, warmup=6), graphed


class NotebookStyleDataset(torch.utils.data.Dataset):
    """Per-image Python: to float, normalize outside the model (as torchvision's ToTensor + Normalize)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return (self.images[index].float() / 255 - self.mean) / self.std, self.labels[index]


def reference_training(device: torch.device, batch: int, seconds: float, perturb: bool) -> float:
    """The original notebook's loop: DataLoader, fp32, normalized inputs, per-batch perturbation calls."""
    model = CifarResNet18().to(device)
    model.normalize = torch.nn.Identity()   # the notebook normalized in the data pipeline instead
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = synthetic_split(batch * 8, torch.device("cpu"))
    loader = torch.utils.data.DataLoader(NotebookStyleDataset(images, labels), batch_size=batch, shuffle=True)
    iterator = [iter(loader)]

    def step() -> int:
        try:
            x, y = next(iterator[0])
        except StopIteration:
            iterator[0] = iter(loader)
            x, y = next(iterator[0])
        x, y = x.to(device), y.to(device)
        if perturb:   # one coin per batch and perturbation, as the notebook did
            if torch.rand(()) < 0.3:
                x = x * (0.7 + 0.6 * torch.rand(()))
            if torch.rand(()) < 0.3:
                x = x + 0.05 * torch.randn_like(x) * (torch.rand_like(x) > 0.7)
            if torch.rand(()) < 0.3:
                x = fgm(model, x, 0.1)
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(y)
    return throughput(step, device, seconds)


def evaluation_throughput(compute: Compute, batch: int, seconds: float) -> float:
    model = compute.prepare(CifarResNet18()).eval()
    images, _ = synthetic_split(batch * 4, compute.device)
    return throughput(lambda: len(embed_and_classify(model, images, compute, batch)[0]), compute.device, seconds)


def attack_throughput(compute: Compute, batch: int, seconds: float) -> float:
    model = compute.prepare(CifarResNet18()).eval()
    pixels, _ = synthetic_split(batch, compute.device)
    images = compute.images(pixels)

    def step() -> int:
        with compute.autocast():
            fgm(model, images, 0.025)
        return batch
    return throughput(step, compute.device, seconds)


def training_flops_per_image(compute: Compute, batch: int = 32) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = compute.prepare(CifarResNet18())
    images = compute.images(synthetic_split(batch, compute.device)[0])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images).float(), torch.zeros(batch, dtype=torch.long, device=compute.device)).backward()
    return counter.get_total_flops() / batch


def knn_seconds(device: torch.device, k: int = 3) -> float:
    generator = torch.Generator().manual_seed(0)
    def unit(n):
        return F.normalize(torch.randn(n, 128, generator=generator), dim=1).to(device)
    fit, val, test = unit(10_000), unit(40_000), unit(10_000)
    labels = (torch.arange(10_000) % 10).to(device)
    synchronize(device)
    started = time.perf_counter()
    knn_predict(fit, labels, fit, k, exclude_same_index=True)
    knn_predict(fit, labels, val, k)
    knn_predict(fit, labels, test, k)
    synchronize(device)
    return time.perf_counter() - started


def umap_seconds(plot_samples: int = 2000) -> tuple[float, float]:
    """(first call in this process, which may compile; a second fit + transform) on 10k x 128 embeddings."""
    import numpy as np

    from robust_cifar.reporting.umap_plot import fit_umap

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 128))
    train = (centres[np.arange(10_000) % 10] + rng.normal(scale=0.5, size=(10_000, 128))).astype(np.float32)
    times = []
    for _ in range(2):
        started = time.perf_counter()
        reducer = fit_umap(train, 15, 0.1, seed=0)
        for _panel in range(6):
            reducer.transform(train[:plot_samples])
        times.append(time.perf_counter() - started)
    return times[0], times[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast / channels_last")
    parser.add_argument("--seconds", type=float, help="per measurement, after warm-up (default 3)")
    parser.add_argument("--long", action="store_true", help="15 s per measurement")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--skip", nargs="*", default=[], choices=["reference", "knn", "umap"])
    parser.add_argument("--deterministic", action="store_true",
                        help="CUDA: deterministic kernels (compute.deterministic), to measure what they cost")
    parser.add_argument("--no-graphs", action="store_true",
                        help="CUDA: time only the eager training step (compute.cuda_graphs=false)")
    args = parser.parse_args(argv)
    if args.long and args.seconds is not None:
        parser.error("--long is 15 s per measurement: give --long or --seconds, not both")
    seconds = 15.0 if args.long else 3.0 if args.seconds is None else args.seconds
    if args.batch < 1:
        parser.error(f"--batch {args.batch}: must be at least 1")
    if not 0 < seconds < 3600:
        parser.error(f"--seconds {seconds}: must be above 0 and below an hour")
    if not (args.device == "auto" or DEVICE.check(args.device)):
        parser.error(f"--device {args.device}: must be auto, cpu, cuda or cuda:N")
    try:
        compute = Compute.create(args.device, fast=not args.fp32, deterministic=args.deterministic,
                                 cuda_graphs=not args.no_graphs)
    except DeviceError:   # its fix speaks of params: here the flag is --device
        parser.error(f"--device {args.device}: this machine has no such device (--device cpu, or auto)")
    device = compute.device
    torch.manual_seed(0)
    print(f"device: {compute.describe()}{', deterministic kernels' if args.deterministic else ''}; "
          f"torch {torch.__version__}; {torch.get_num_threads()} CPU threads")
    print(f"batch {args.batch}, {seconds:.0f} s per measurement after warm-up\n")

    # The first training measurement in a process pays one-off costs (kernel selection, allocator
    # growth, oneDNN primitive creation); a throwaway run keeps them out of the numbers.
    try:
        project_training(REFERENCE_METHOD, compute, args.batch, seconds=0)
    except (torch.OutOfMemoryError, RuntimeError) as error:   # the CPU allocator's is a RuntimeError
        if not isinstance(error, torch.OutOfMemoryError) and "can't allocate memory" not in str(error):
            raise
        raise UserError(f"--batch {args.batch}: a training step of that batch does not fit in the memory of {device}; "
                        "give a smaller --batch (the study's is 256)") from None
    rates = {}
    for name in REGISTRY:
        rates[name], graphed = project_training(name, compute, args.batch, seconds)
        line = f"train step  {name:<20} {rates[name]:10.0f} img/s"
        if graphed:
            eager, _ = project_training(name, dataclasses.replace(compute, cuda_graphs=False), args.batch, seconds)
            line += f" as CUDA graphs ({rates[name] / eager:.2f}x the eager step's {eager:.0f} img/s)"
        print(line)
    print(f"evaluation (embed + logits) {evaluation_throughput(compute, 1024, seconds):10.0f} img/s")
    print(f"FGM attack (fwd + bwd)      {attack_throughput(compute, 1024, seconds):10.0f} img/s")

    if "reference" not in args.skip:
        print()
        # the notebook's two loops: a head on clean images, and on images drawn through the study's perturbations
        perturbed = shaped_like(CrossEntropyHead, DrawnPerturbations, load_params())
        for name, perturb in ((REFERENCE_METHOD, False), (perturbed, True)):
            reference = reference_training(device, args.batch, seconds, perturb=perturb)
            calls = ", per-batch perturbation calls" if perturb else ""
            print(f"reference loop (notebook style, fp32, DataLoader{calls}) for {name}: {reference:.0f} img/s -> "
                  f"project / reference = {rates[name] / reference:.2f}x")

    if device.type == "cuda":
        flops = training_flops_per_image(compute)
        name = torch.cuda.get_device_name(device)
        peak = next((value for key, value in BF16_PEAK_FLOPS.items() if key in name), None)
        rate = rates[REFERENCE_METHOD]
        achieved = rate * flops
        utilisation = f"{achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16 peak" if peak else "peak unknown"
        print(f"\nMFU ({REFERENCE_METHOD} step): {flops / 1e9:.2f} GFLOP/img x {rate:.0f} img/s = "
              f"{achieved / 1e12:.1f} TFLOP/s, {utilisation}")

    if "knn" not in args.skip:
        print(f"\n3-NN (leave-one-out 10k, 40k and 10k queries on 10k x 128): {knn_seconds(device):.2f} s")
    if "umap" not in args.skip:
        first, second = umap_seconds()
        print(f"UMAP (fit 10k x 128 + transform 6 x 2,000): {first:.1f} s first call in this process "
              f"(includes compiling or loading the numba cache), {second:.1f} s again")


if __name__ == "__main__":
    run_tool(main)
