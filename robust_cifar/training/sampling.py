"""Epoch index samplers: plain shuffling, and class-balanced batches for metric losses."""

import math

import torch
from torch import Tensor


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A random permutation of range(n) cut into batches; the last one may be short."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    permutation = torch.randperm(n, generator=generator, device=generator.device)
    return list(permutation.split(batch_size))


def balanced_batches(labels: Tensor, per_class: int, generator: torch.Generator) -> list[Tensor]:
    """Batches holding exactly `per_class` indices of every class present in `labels`.

    Each class's indices are permuted once per epoch and read cyclically to fill
    slots = n_batches * per_class places, n_batches = max_c ceil(count_c / per_class),
    so every index appears at least once. What repeats: the permuted list of a class
    is read again from its start once exhausted, so its item j (0-based) appears
    slots // count_c + (1 if j < slots % count_c else 0) times. Only a class with
    count_c == slots has no repeats; even the largest class repeats its first
    slots - count_max items when per_class does not divide count_max. Inside a batch
    the order is shuffled, so the class-major layout does not leak into position.

    Returns a list of n_batches LongTensors on labels' device.
    """
    if per_class < 2:
        raise ValueError(
            f"per_class must be >= 2 so every batch has positive pairs, got {per_class}"
        )
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if labels.numel() == 0:
        return []
    class_ids, counts = labels.unique(return_counts=True)
    n_batches = math.ceil(counts.max().item() / per_class)
    slots = n_batches * per_class
    per_class_slots = [
        _cyclic_permuted_indices(labels, class_id, slots, generator) for class_id in class_ids
    ]
    # (classes, batches, per_class) -> (batches, classes * per_class)
    class_major = torch.stack(per_class_slots).view(len(class_ids), n_batches, per_class)
    batches = class_major.transpose(0, 1).reshape(n_batches, -1)
    return list(_shuffle_rows(batches, generator))


def _cyclic_permuted_indices(
    labels: Tensor, class_id: Tensor, slots: int, generator: torch.Generator
) -> Tensor:
    members = torch.nonzero(labels == class_id).squeeze(1)
    order = torch.randperm(len(members), generator=generator, device=generator.device)
    permuted = members[order.to(members.device)]
    wrap_positions = torch.arange(slots, device=members.device) % len(members)
    return permuted[wrap_positions]


def _shuffle_rows(rows: Tensor, generator: torch.Generator) -> Tensor:
    # argsort of iid uniforms is an independent uniform permutation per row.
    keys = torch.rand(rows.shape, generator=generator, device=generator.device)
    return rows.gather(1, keys.argsort(dim=1).to(rows.device))
