"""Indexed writes and class sums that give the same bits on every run, at any thread count.

- `buffer[indices] = values` is an `index_put_` that PyTorch's CPU kernel splits across
  threads when the batch is large (260 x 128 floats is); with a repeated index, whichever
  thread writes last wins, so the row can hold a different occurrence's values from one run
  to the next (on CUDA too). Class-balanced batches repeat an image inside a batch when its
  class has fewer images than a method's `per_class`. `write_rows` fixes the winner.
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
