"""One training loop for every method: a method only chooses its objective, batches and perturbation.

The split lives on the device as uint8 tensors and batches are taken by index, so there is no
DataLoader and no per-image Python. Per-step metrics accumulate on the device; the host reads
them once per epoch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from robust_cifar.angular_loss import angular_loss
from robust_cifar.compute import Compute
from robust_cifar.inference import BatchTransform, embed_and_classify
from robust_cifar.methods import Method, class_means
from robust_cifar.model import CifarResNet18
from robust_cifar.params import AngularConfig, TrainConfig
from robust_cifar.perturb import PerturbSettings, apply_perturbations, draw_perturbations
from robust_cifar.sampling import balanced_batches, shuffled_batches


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
    perturb: Optional[PerturbSettings] = None   # adversarial training
    angular: Optional[AngularConfig] = None     # angular training


def epoch_batches(setup: TrainingSetup, labels: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    if setup.method.balanced_batches:
        batches = balanced_batches(labels.cpu(), setup.angular.per_class, generator)
    else:
        batches = shuffled_batches(len(labels), setup.train.batch_size, generator)
    # one host->device copy per epoch rather than one per step
    flat = torch.cat(batches).to(setup.compute.device, non_blocking=True)
    return list(flat.split([len(batch) for batch in batches]))


def objective_loss(setup: TrainingSetup, model: CifarResNet18, images: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's loss and the batch's normalized embeddings (angular) or logits (cross-entropy)."""
    if setup.method.objective == "angular":
        embeddings = model.embed(images)
        return angular_loss(embeddings, labels, setup.angular.alpha), embeddings
    logits = model(images)
    return F.cross_entropy(logits.float(), labels), logits


def nearest_mean_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    return ((embeddings @ means.T).argmax(1) == labels).float().mean()


def validate(setup: TrainingSetup, model: CifarResNet18, train: SplitTensors, val: SplitTensors,
             perturbed_val: Optional[BatchTransform]) -> dict[str, float]:
    """Clean validation loss/accuracy in the method's own terms (+ perturbed accuracy for adversarial)."""
    batch_size = setup.eval_batch_size
    embeddings, logits = embed_and_classify(model, val.images, setup.compute, batch_size)
    if setup.method.has_head:
        row = {"val_loss": F.cross_entropy(logits, val.labels).item(),
               "val_acc": (logits.argmax(1) == val.labels).float().mean().item()}
    else:
        # No head: accuracy of the nearest class mean of the clean training embeddings; the loss
        # is the angular loss itself on class-balanced validation batches (fixed order).
        train_embeddings, _ = embed_and_classify(model, train.images, setup.compute, batch_size)
        means = class_means(train_embeddings, train.labels, setup.num_classes)
        order = balanced_batches(val.labels.cpu(), setup.angular.per_class, torch.Generator().manual_seed(setup.seed))
        losses = [angular_loss(embeddings[batch], val.labels[batch], setup.angular.alpha)
                  for batch in (batch.to(embeddings.device) for batch in order)]
        row = {"val_loss": torch.stack(losses).mean().item(),
               "val_acc": nearest_mean_accuracy(embeddings, val.labels, means).item()}
    if perturbed_val is not None:
        _, perturbed_logits = embed_and_classify(model, val.images, setup.compute, batch_size, transform=perturbed_val)
        row["val_perturbed_acc"] = (perturbed_logits.argmax(1) == val.labels).float().mean().item()
    return row


def perturbed_val_transform(setup: TrainingSetup, model: CifarResNet18, n_images: int,
                            image_shape) -> BatchTransform:
    """One fixed draw for the whole run (seeded), so the per-epoch curve compares like with like."""
    generator = torch.Generator(device=setup.compute.device).manual_seed(setup.seed + 1)
    draw = draw_perturbations(n_images, image_shape, setup.perturb, generator, setup.compute.device)

    def transform(images: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return apply_perturbations(images, draw.rows(start, stop), setup.perturb, score_fn=model)
    return transform


def train_model(setup: TrainingSetup, model: CifarResNet18, train: SplitTensors, val: SplitTensors,
                progress: bool = True) -> list[dict]:
    """Train in place; returns one row per epoch (training metrics, lr, seconds; validation when run)."""
    compute, config, method = setup.compute, setup.train, setup.method
    torch.manual_seed(setup.seed)
    order_generator = torch.Generator().manual_seed(setup.seed)
    perturb_generator = torch.Generator(device=compute.device).manual_seed(setup.seed)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.lr_factor,
                                                           patience=config.lr_patience)
    image_shape = tuple(train.images.shape[1:])
    perturbed_val = (perturbed_val_transform(setup, model, len(val.labels), image_shape)
                     if method.perturb_on_the_fly else None)
    epoch_embeddings = torch.zeros(len(train.labels), model.config["embedding_dim"], device=compute.device)

    history = []
    bar = tqdm(total=config.epochs * len(train.labels), unit="img", unit_scale=True, disable=not progress,
               desc=f"train@{method.name}")
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=compute.device)
        correct = torch.zeros((), device=compute.device)
        seen = 0
        for indices in epoch_batches(setup, train.labels, order_generator):
            labels = train.labels[indices]
            loss, outputs = train_step(setup, model, optimizer, train.images[indices], labels, perturb_generator)
            loss_sum += loss * len(indices)
            if method.has_head:
                correct += (outputs.argmax(1) == labels).sum()
            else:
                epoch_embeddings[indices] = outputs.float()
            seen += len(indices)
            bar.update(len(indices))
        if not method.has_head:
            # training accuracy of a head-less model: nearest class mean of this epoch's embeddings
            means = class_means(epoch_embeddings, train.labels, setup.num_classes)
            correct = nearest_mean_accuracy(epoch_embeddings, train.labels, means) * seen
        train_loss = (loss_sum / seen).item()   # the one host sync of the epoch
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": (correct / seen).item(),
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        scheduler.step(train_loss)
        if epoch % config.val_every == 0 or epoch == config.epochs:
            started = time.perf_counter()
            row.update(validate(setup, model, train, val, perturbed_val))
            row["val_seconds"] = time.perf_counter() - started
        history.append(row)
        bar.set_postfix({key: f"{value:.3g}" for key, value in row.items()
                         if key in ("epoch", "train_loss", "train_acc", "val_acc", "val_perturbed_acc", "lr")})
    bar.close()
    return history


def make_optimizer(model: CifarResNet18, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_step(setup: TrainingSetup, model: CifarResNet18, optimizer: torch.optim.Optimizer, pixels: torch.Tensor,
               labels: torch.Tensor, perturb_generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch of uint8 images; returns the detached loss and outputs."""
    images = setup.compute.images(pixels)
    if setup.method.perturb_on_the_fly:
        images = perturb_training_batch(setup, model, images, perturb_generator)
    with setup.compute.autocast():
        loss, outputs = objective_loss(setup, model, images, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), outputs.detach()


def perturb_training_batch(setup: TrainingSetup, model: CifarResNet18, images: torch.Tensor,
                           generator: torch.Generator) -> torch.Tensor:
    """Fresh seeded draws per batch; FGM against the current model in eval mode (its real decision
    path, and without the attack's forward passes moving batch-norm statistics)."""
    draw = draw_perturbations(len(images), tuple(images.shape[1:]), setup.perturb, generator, images.device)
    model.eval()
    with setup.compute.autocast():
        perturbed = apply_perturbations(images, draw, setup.perturb, score_fn=model)
    model.train()
    return perturbed
