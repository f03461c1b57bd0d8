"""Angular loss (Wang et al., "Deep Metric Learning with Angular Loss", ICCV 2017).

N-pair form, as in pytorch-metric-learning's ``losses.AngularLoss``: every ordered
positive pair (a, p) -- a != p, same label -- is contrasted with every item n of
another class:

    loss(a, p) = log(1 + sum_n exp(4 t (x_a + x_p)^T x_n - 2 (1 + t) x_a^T x_p)),
    t = tan^2(alpha),

and the batch loss is the mean over positive pairs. Embeddings must already be
L2-normalized (the loss does not normalize them, so the caller decides where).

Bit-reproducible on a multi-threaded CPU: the batch is permuted class-major once and
every positive pair (a, p) is formed by broadcasting S[a, :] + S[p, :] inside dense
(classes, n, n, B) blocks, one block per class size (a class-balanced batch is a single
block, the size of the former (pairs, B) rows plus the n a == p rows). The backward is
then matmuls and fixed-order reductions. Gathering the pair rows by repeated index
(``similarity[anchor_idx]``) made the backward an ``index_put_(accumulate=True)``, which
PyTorch's CPU kernel runs with racing atomic float adds once the tensor exceeds its
parallel grain (32768 elements) and more than one thread is used.
"""

import math

import torch
from torch import Tensor


def angular_loss(embeddings: Tensor, labels: Tensor, alpha_degrees: float, per_class: int | None = None) -> Tensor:
    """Mean N-pair angular loss over all ordered positive pairs of the batch.

    embeddings: (B, D), L2-normalized rows. labels: (B,) integer class ids.
    per_class: set it when every class in the batch has exactly this many rows (a class-balanced
    batch): the grouping is then computed on the device without reading the labels on the host,
    so a CUDA graph can capture the loss. A batch that is not balanced fails a device-side check.
    Returns a differentiable scalar (float32, or float64 for float64 input).
    """
    tan_sq_alpha = _tan_squared_alpha(alpha_degrees)
    _check_batch_shapes(embeddings, labels)
    # Exponents reach ~8 tan^2(alpha): half precision would overflow or lose the
    # small differences the loss is made of, so autocast must not touch this.
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
        order, groups = _class_major_groups(labels) if per_class is None else _balanced_groups(labels, per_class)
        n_pairs = sum(n_classes * size * (size - 1) for _, n_classes, size in groups)
        if n_pairs == 0:
            # Still attached to the graph so callers can call backward() unconditionally.
            return x.sum() * 0
        # A permutation: its backward writes every row exactly once (no accumulation).
        x_sorted, labels_sorted = x[order], labels[order]
        total = x.new_zeros(())
        for start, n_classes, size in groups:
            if size < 2:
                continue
            stop = start + n_classes * size
            members = x_sorted[start:stop].view(n_classes, size, -1)
            total = total + _group_pair_loss_sum(
                members, x_sorted, labels_sorted[start:stop:size], labels_sorted, tan_sq_alpha
            )
        return total / n_pairs


def _tan_squared_alpha(alpha_degrees: float) -> float:
    # alpha = 90 makes tan infinite; alpha <= 0 makes the angle constraint vacuous.
    if not 0.0 < alpha_degrees < 90.0:  # also rejects NaN
        raise ValueError(f"alpha must be in (0, 90) degrees, got {alpha_degrees!r}")
    return math.tan(math.radians(alpha_degrees)) ** 2


def _check_batch_shapes(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.ndim != 2 or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"expected embeddings (B, D) and labels (B,), got {tuple(embeddings.shape)} "
            f"and {tuple(labels.shape)}"
        )


def _class_major_groups(labels: Tensor) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """A permutation of the batch and the groups it is cut into.

    The permutation sorts rows by (size of their class, class id, position), so classes of
    equal size lie next to each other: each group (start, n_classes, size) is the block
    order[start : start + n_classes * size], n_classes whole classes of `size` members
    each. A class-balanced batch is a single group, so the loss is one batched block.
    """
    # A few hundred labels: sorting them on the host costs one small copy (the group sizes
    # must reach Python anyway) instead of a dozen tiny kernels on an accelerator.
    host_labels = labels.cpu()
    _, class_of_row, class_sizes = host_labels.unique(return_inverse=True, return_counts=True)
    key = class_sizes[class_of_row] * len(class_sizes) + class_of_row
    order = torch.sort(key, stable=True).indices
    sizes, n_classes = class_sizes.unique(return_counts=True)   # ascending sizes
    groups, start = [], 0
    for size, count in zip(sizes.tolist(), n_classes.tolist()):
        groups.append((start, count, size))
        start += count * size
    return order.to(labels.device, non_blocking=True), groups


def _balanced_groups(labels: Tensor, per_class: int) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """The grouping of _class_major_groups for a batch of `per_class` rows of each class: one group,
    the rows sorted by class (stably, so the same permutation), found without a host sync."""
    if per_class < 2 or len(labels) % per_class:
        raise ValueError(f"a batch of {len(labels)} rows cannot hold exactly {per_class} rows of each class")
    n_classes = len(labels) // per_class
    order = torch.sort(labels, stable=True).indices
    by_class = labels[order].view(n_classes, per_class)
    torch._assert_async(((by_class == by_class[:, :1]).all() & (by_class[1:, 0] != by_class[:-1, 0]).all()),
                        "angular_loss(per_class=...) got a batch that is not class-balanced")
    return order, [(0, n_classes, per_class)]


def _group_pair_loss_sum(members: Tensor, candidates: Tensor, member_labels: Tensor,
                         candidate_labels: Tensor, tan_sq_alpha: float) -> Tensor:
    """Sum of loss(a, p) over the ordered pairs a != p inside each class of a group.

    members: (C, n, D), C classes of n rows each; candidates: (B, D), the whole batch;
    member_labels: (C,) the class id of each block. Rows (a, p) are built as the
    broadcast S[a, :] + S[p, :] of a (C, n, n, B) block: the backward is a sum over a
    fixed axis, deterministic, where a gather by pair index would scatter-add.
    """
    is_negative = member_labels.view(-1, 1, 1) != candidate_labels.view(1, 1, -1)        # (C, 1, B)
    # Scale and mask the small factors before broadcasting, so the (C, n, n, B) block is
    # written once: a candidate of the pair's own class is -inf in both halves, so in the sum.
    to_negatives = ((4.0 * tan_sq_alpha) * (members @ candidates.T)).masked_fill(~is_negative, -math.inf)
    pair_term = (2.0 * (1.0 + tan_sq_alpha)) * (members @ members.transpose(1, 2))       # (C, n, n)
    exponents = to_negatives.unsqueeze(2) + to_negatives.unsqueeze(1) - pair_term.unsqueeze(3)
    pair_losses = _log_one_plus_sum_exp(exponents)                                      # (C, n, n)
    is_self_pair = torch.eye(members.shape[1], dtype=torch.bool, device=members.device)  # a == p
    return pair_losses.masked_fill(is_self_pair, 0.0).sum()


def _log_one_plus_sum_exp(exponents: Tensor) -> Tensor:
    """log(1 + sum exp(exponents)) over the last axis, overflow-free; -inf entries drop out.

    The "1 +" is an extra exp(0) term, so appending a zero column turns this into a
    plain logsumexp; it also makes a row with no negatives come out as exactly 0, with a
    zero (not NaN) gradient.
    """
    implicit_one = exponents.new_zeros(*exponents.shape[:-1], 1)
    return torch.logsumexp(torch.cat([exponents, implicit_one], dim=-1), dim=-1)
