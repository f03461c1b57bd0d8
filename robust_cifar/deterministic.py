"""Indexed writes and class sums that give the same bits on every run, at any thread count.

- `buffer[indices] = values` is an `index_put_` that PyTorch's CPU kernel splits across
  threads when the batch is large (260 x 128 floats is); with a repeated index, whichever
  thread writes last wins, so the row can hold a different occurrence's values from one run
  to the next (on CUDA too). Class-balanced batches repeat an image inside a batch when its
  class has fewer images than `angular.per_class`. `write_rows` fixes the winner.
- `index_add_` is serial over its indices on a CPU but uses atomic adds on CUDA (unless
  torch.use_deterministic_algorithms is on). `class_means` avoids it there.
"""
from __future__ import annotations

import torch
from torch import Tensor


def last_occurrence(indices: Tensor) -> Tensor:
    """For each position i, the last position j with indices[j] == indices[i] (j >= i).

    A (B, B) comparison, so cost depends on the batch only (260^2 booleans), needs no host
    sync, and integer max is order-free: identical on every device and thread count.
    """
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
    positions = torch.arange(len(indices), device=indices.device)
    same = indices.unsqueeze(0) == indices.unsqueeze(1)
    return torch.where(same, positions, -1).amax(dim=1)


def write_rows(buffer: Tensor, indices: Tensor, values: Tensor) -> None:
    """buffer[indices] = values in place, the last occurrence of a repeated index winning.

    That is what a one-thread run of `buffer[indices] = values` gives, but here every copy of a
    repeated index writes the same (last) row, so the threads' race cannot change the result.
    """
    if values.shape[0] != indices.shape[0]:
        raise ValueError(f"{indices.shape[0]} indices but {values.shape[0]} value rows")
    if indices.numel() == 0:
        return
    buffer[indices] = values[last_occurrence(indices)].to(buffer.dtype)


def class_means(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Unit-length mean embedding of each class, the same bits on every run on any device.

    A drop-in for methods.class_means. Its `index_add_` is kept on a CPU, where PyTorch runs
    it serially over the indices (repeatable at any thread count, and the same bits as
    before); on CUDA it accumulates with atomic adds unless torch.use_deterministic_algorithms
    is on, so there the class sums are one float64 matmul with the one-hot label matrix
    instead: no atomics, no TF32 rounding (TF32 touches float32 matmuls only).
    """
    if embeddings.device.type == "cpu":
        sums = torch.zeros(num_classes, embeddings.shape[1], dtype=torch.float32)
        sums.index_add_(0, labels, embeddings.float())
    else:
        sums = class_sums_by_matmul(embeddings, labels, num_classes)
    return torch.nn.functional.normalize(sums, dim=1)


def class_sums_by_matmul(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(num_classes, D) float32 sums of each class's rows: one-hot^T @ embeddings in float64."""
    one_hot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float64)
    return (one_hot.T @ embeddings.to(torch.float64)).to(torch.float32)
