"""Angular loss (Wang et al., "Deep Metric Learning with Angular Loss", ICCV 2017).

N-pair form, as in pytorch-metric-learning's ``losses.AngularLoss``: every ordered
positive pair (a, p) -- a != p, same label -- is contrasted with every item n of
another class:

    loss(a, p) = log(1 + sum_n exp(4 t (x_a + x_p)^T x_n - 2 (1 + t) x_a^T x_p)),
    t = tan^2(alpha),

and the batch loss is the mean over positive pairs. Embeddings must already be
L2-normalized (the loss does not normalize them, so the caller decides where).
"""

import math

import torch
from torch import Tensor


def angular_loss(embeddings: Tensor, labels: Tensor, alpha_degrees: float) -> Tensor:
    """Mean N-pair angular loss over all ordered positive pairs of the batch.

    embeddings: (B, D), L2-normalized rows. labels: (B,) integer class ids.
    Returns a differentiable scalar (float32, or float64 for float64 input).
    """
    tan_sq_alpha = _tan_squared_alpha(alpha_degrees)
    _check_batch_shapes(embeddings, labels)
    # Exponents reach ~8 tan^2(alpha): half precision would overflow or lose the
    # small differences the loss is made of, so autocast must not touch this.
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
        anchor_idx, positive_idx = _ordered_positive_pairs(labels)
        if anchor_idx.numel() == 0:
            # Still attached to the graph so callers can call backward() unconditionally.
            return x.sum() * 0
        similarity = x @ x.T
        exponents = _pair_negative_exponents(similarity, anchor_idx, positive_idx, tan_sq_alpha)
        is_negative = labels[anchor_idx].unsqueeze(1) != labels.unsqueeze(0)
        return _log_one_plus_sum_exp(exponents, is_negative).mean()


def _tan_squared_alpha(alpha_degrees: float) -> float:
    # alpha = 90 makes tan infinite; alpha <= 0 makes the angle constraint vacuous.
    if not 0.0 < alpha_degrees < 90.0:  # also rejects NaN
        raise ValueError(f"angular.alpha must be in (0, 90) degrees, got {alpha_degrees!r}")
    return math.tan(math.radians(alpha_degrees)) ** 2


def _check_batch_shapes(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.ndim != 2 or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"expected embeddings (B, D) and labels (B,), got {tuple(embeddings.shape)} "
            f"and {tuple(labels.shape)}"
        )


def _ordered_positive_pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
    same_label = labels.unsqueeze(1) == labels.unsqueeze(0)
    same_label.fill_diagonal_(False)
    anchor_idx, positive_idx = torch.nonzero(same_label, as_tuple=True)
    return anchor_idx, positive_idx


def _pair_negative_exponents(
    similarity: Tensor, anchor_idx: Tensor, positive_idx: Tensor, tan_sq_alpha: float
) -> Tensor:
    """(P, B) exponents 4t(S[a,n] + S[p,n]) - 2(1+t)S[a,p], one row per positive pair.

    Rows are only built for positive pairs (P = sum_c n_c (n_c - 1)), not for all
    B x B anchor/candidate combinations: for a class-balanced batch this is
    n_classes times smaller than the full (B, B, B) tensor.
    """
    pair_similarity = similarity[anchor_idx, positive_idx].unsqueeze(1)
    to_candidates = similarity[anchor_idx] + similarity[positive_idx]
    return 4.0 * tan_sq_alpha * to_candidates - 2.0 * (1.0 + tan_sq_alpha) * pair_similarity


def _log_one_plus_sum_exp(exponents: Tensor, keep: Tensor) -> Tensor:
    """Row-wise log(1 + sum_{keep} exp(exponents)), overflow-free.

    The "1 +" is an extra exp(0) term, so appending a zero column turns this into a
    plain logsumexp; it also makes a row with no negatives come out as exactly 0.
    """
    masked = exponents.masked_fill(~keep, -math.inf)
    implicit_one = masked.new_zeros(masked.shape[0], 1)
    return torch.logsumexp(torch.cat([masked, implicit_one], dim=1), dim=1)
