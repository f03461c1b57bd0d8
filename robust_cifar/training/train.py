"""One training loop for every method: the method chooses its batches, loss, perturbation and validation.

The split lives on the device as uint8 tensors and batches are taken by index, so there is no
DataLoader and no per-image Python. Per-step metrics accumulate on the device; the host reads
them once per epoch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from robust_cifar.compute import Compute
from robust_cifar.errors import TrainingDiverged
from robust_cifar.evaluation.inference import BatchTransform, embed_and_classify
from robust_cifar.model import CifarResNet18
from robust_cifar.params import BELOW_ONE, OPEN_FRACTION, Params, bounded_int, bounded_real, one_of
from robust_cifar.training.methods.method import Method
from robust_cifar.training.step_graphs import GraphedSteps, StepFn, keep_learning_rate_tensor, tensor_learning_rate

# The perturbed validation draws its perturbations from the training seed plus this, apart from the
# training batches' draws (the seed itself). A constant, not a param: it changes the validation curve only,
# never the trained model.
PERTURBED_VAL_SEED_OFFSET = 1

# What ReduceLROnPlateau watches: the mean training loss of the epoch, (as the original notebook did)
# the loss of its last batch, or the clean validation loss (then computed, alone, in every epoch).
SCHEDULE_SIGNALS = ("epoch_mean", "last_batch", "validation")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    lr_factor: float
    lr_patience: int
    lr_schedule_on: str
    val_every: int
    # Methods trained on perturbations also validate perturbed (FGM against the model): the dearest
    # part of validation, so it has its own cadence. Neither cadence changes the trained model (the
    # validation schedule signal computes the clean validation loss, alone, in every other epoch).
    perturbed_val_every: int = 1

    @classmethod
    def from_params(cls, params: Params) -> "TrainConfig":
        return cls(epochs=params.value("train.epochs", bounded_int(1, 10_000, "the study trains 100")),
                   lr=params.value("train.lr", bounded_real(0, 10, "the study uses 0.01", open_low=True)),
                   momentum=params.value("train.momentum", BELOW_ONE),
                   weight_decay=params.value("train.weight_decay", bounded_real(0, 1, "the study uses 0")),
                   lr_factor=params.value("train.lr_factor", OPEN_FRACTION),
                   lr_patience=params.value("train.lr_patience", bounded_int(0, 1_000, "epochs; the study waits 2")),
                   lr_schedule_on=params.value("train.lr_schedule_on", one_of(*SCHEDULE_SIGNALS)),
                   val_every=params.value("train.val_every", bounded_int(1, 10_000, "epochs")),
                   perturbed_val_every=params.value("train.perturbed_val_every", bounded_int(1, 10_000, "epochs")))

    def validates(self, epoch: int) -> bool:
        return epoch % self.val_every == 0 or epoch == self.epochs

    def validates_perturbed(self, epoch: int) -> bool:
        return epoch % self.perturbed_val_every == 0 or epoch == self.epochs


@dataclass
class SplitTensors:
    images: torch.Tensor   # uint8 (N, 3, 32, 32) on the compute device
    labels: torch.Tensor   # int64 (N,) on the compute device


@dataclass
class TrainingSetup:
    method: Method
    train: TrainConfig
    compute: Compute
    seed: int
    num_classes: int
    eval_batch_size: int


def epoch_batches(setup: TrainingSetup, labels: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    batches = setup.method.batch_order.epoch(labels, generator)
    # one host->device copy per epoch rather than one per step
    flat = torch.cat(batches).to(setup.compute.device, non_blocking=True)
    return list(flat.split([len(batch) for batch in batches]))


CLEAN_VALIDATION = ("full", "loss", "none")   # loss and accuracy; the loss alone; neither


def validate(setup: TrainingSetup, model: CifarResNet18, train: SplitTensors, val: SplitTensors,
             perturbed_val: Optional[Callable[[object], BatchTransform]], progress: bool = False,
             clean: str = "full") -> dict[str, float]:
    """Clean validation in the method's own terms (`clean`: "full", the loss and accuracy; "loss", the
    loss alone, which needs no training embeddings; "none"), and perturbed accuracy for methods trained
    on perturbations (when `perturbed_val` is given: their attack aimed at the model's own decision)."""
    if clean not in CLEAN_VALIDATION:
        raise ValueError(f"clean must be one of {CLEAN_VALIDATION}, not {clean!r}")
    objective, batch_size = setup.method.objective, setup.eval_batch_size
    row = {}
    if clean != "none":
        embeddings, logits = embed_and_classify(model, val.images, setup.compute, batch_size,
                                                progress=progress and "validate")
        row["val_loss"] = objective.validation_loss(embeddings, logits, val.labels, setup.seed)
    if clean != "full" and perturbed_val is None:
        return row
    train_embeddings = (embed_and_classify(model, train.images, setup.compute, batch_size)[0]
                        if objective.needs_train_embeddings else None)
    reference = objective.reference(train_embeddings, train.labels, setup.num_classes)
    if clean == "full":
        row["val_acc"] = accuracy(objective.predict(embeddings, logits, reference), val.labels)
    if perturbed_val is not None:
        transform = perturbed_val(objective.score_fn(model, reference))
        embeddings, logits = embed_and_classify(model, val.images, setup.compute, batch_size, transform=transform,
                                                progress=progress and "validate, perturbed")
        row["val_perturbed_acc"] = accuracy(objective.predict(embeddings, logits, reference), val.labels)
    return row


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted == labels).float().mean().item()


def perturbed_val_transform(setup: TrainingSetup, val: SplitTensors) -> Callable[[object], BatchTransform]:
    """One fixed draw for the whole run (seeded), so the per-epoch curve compares like with like."""
    generator = torch.Generator(device=setup.compute.device).manual_seed(setup.seed + PERTURBED_VAL_SEED_OFFSET)
    return setup.method.training_perturbation.validation(val.labels, tuple(val.images.shape[1:]), generator)


EpochCallback = Callable[[dict], None]


def train_model(setup: TrainingSetup, model: CifarResNet18, train: SplitTensors, val: SplitTensors,
                progress: bool = True, on_epoch: Optional[EpochCallback] = None) -> list[dict]:
    """Train in place; returns one row per epoch (training metrics, lr, seconds; validation when run)."""
    compute, config, method = setup.compute, setup.train, setup.method
    torch.manual_seed(setup.seed)
    order_generator = torch.Generator().manual_seed(setup.seed)
    perturb_generator = torch.Generator(device=compute.device).manual_seed(setup.seed)
    graphed = uses_cuda_graphs(setup)
    optimizer = make_optimizer(model, config, graphed_on=compute.device if graphed else None)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.lr_factor,
                                                           patience=config.lr_patience)
    step = training_step(setup, model, optimizer, perturb_generator)
    perturbed_val = perturbed_val_transform(setup, val) if method.training_perturbation is not None else None

    history = []
    # images per epoch from the method's own batch order (balanced batches repeat images); a throwaway generator
    with tqdm(total=config.epochs * sum(map(len, method.batch_order.epoch(train.labels, torch.Generator()))),
              unit="img", unit_scale=True, disable=not progress,
              desc=f"train@{method.name}") as bar:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            model.train()
            tracker = method.objective.training_accuracy(len(train.labels), model, setup.num_classes, compute.device)
            loss_sum = torch.zeros((), device=compute.device)
            seen = 0
            for indices in epoch_batches(setup, train.labels, order_generator):
                labels = train.labels[indices]
                loss, outputs = step(train.images[indices], labels)
                loss_sum += loss * len(indices)
                tracker.update(outputs, labels, indices)
                seen += len(indices)
                bar.update(len(indices))
            train_loss = (loss_sum / seen).item()   # the one host sync of the epoch
            if not math.isfinite(train_loss):   # weights that are NaN now stay NaN: stop, rather than save chance
                raise TrainingDiverged(
                    f"train@{method.name}-{setup.seed} diverged: its mean training loss in epoch {epoch} is {train_loss} "
                    f"(train.lr = {config.lr:g}), and no model was written: lower the learning rate, for example "
                    f"`dvc exp run -S train.lr={config.lr / 10:g} dvc.yaml`")
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": tracker.value(train.labels, seen).item(),
                   "lr": float(optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - started}
            clean_now = config.validates(epoch)
            perturbed_now = perturbed_val is not None and config.validates_perturbed(epoch)
            loss_now = config.lr_schedule_on == "validation"
            if clean_now or perturbed_now or loss_now:
                started = time.perf_counter()
                row.update(validate(setup, model, train, val, perturbed_val if perturbed_now else None, progress,
                                    clean="full" if clean_now else "loss" if loss_now else "none"))
                row["val_seconds"] = time.perf_counter() - started
            scheduler.step(row["val_loss"] if loss_now else loss.item() if config.lr_schedule_on == "last_batch"
                           else train_loss)   # the last batch's loss is read from the device only when it is watched
            if graphed:
                keep_learning_rate_tensor(optimizer)
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            bar.set_postfix({key: f"{value:.3g}" for key, value in row.items()
                             if key in ("epoch", "train_loss", "train_acc", "val_acc", "val_perturbed_acc", "lr")})
    return history


def make_optimizer(model: CifarResNet18, config: TrainConfig,
                   graphed_on: Optional[torch.device] = None) -> torch.optim.Optimizer:
    """SGD with momentum. For a step replayed as a CUDA graph (`graphed_on` its device) the learning
    rate is a tensor on that device and the update one fused kernel that reads it."""
    if graphed_on is None:
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=tensor_learning_rate(config.lr, graphed_on),
                           momentum=config.momentum, weight_decay=config.weight_decay, fused=True)


def uses_cuda_graphs(setup: TrainingSetup) -> bool:
    """Every method's step is replayed as CUDA graphs when `compute.cuda_graphs` is on (CUDA only);
    a method that perturbs its training batches then runs FGM on every row (a fixed shape)."""
    return setup.compute.cuda_graphs


def training_step(setup: TrainingSetup, model: CifarResNet18, optimizer: torch.optim.Optimizer,
                  perturb_generator: torch.Generator) -> StepFn:
    """The step the loop calls with (uint8 pixels, labels): `train_step`, replayed as CUDA graphs
    where `uses_cuda_graphs` (the optimizer must then come from make_optimizer(graphed_on=...))."""
    def step(pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return train_step(setup, model, optimizer, pixels, labels, perturb_generator)
    if not uses_cuda_graphs(setup):
        return step
    # the perturbation draws come from their own generator, which each replay must advance
    return GraphedSteps(step, generators=(perturb_generator,) if setup.method.training_perturbation else ())


def train_step(setup: TrainingSetup, model: CifarResNet18, optimizer: torch.optim.Optimizer, pixels: torch.Tensor,
               labels: torch.Tensor, perturb_generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch of uint8 images; returns the detached loss and outputs."""
    images = setup.method.training_images(model, setup.compute.images(pixels), labels, setup.num_classes,
                                          perturb_generator, setup.compute, fixed_shape=uses_cuda_graphs(setup))
    with setup.compute.autocast(cache_enabled=False):   # capturable (step_graphs); one forward casts each weight once
        loss, outputs = setup.method.objective.loss(model, images, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), outputs.detach()
