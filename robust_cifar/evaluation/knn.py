"""Brute-force k-nearest-neighbour classification of embeddings, on any torch device.

Matches scikit-learn's KNeighborsClassifier(n_neighbors=k): Euclidean distance,
uniform vote, a tie between classes goes to the smallest label. (Ties between
*distances* -- which neighbour is the k-th -- are resolved arbitrarily, as in
scikit-learn.)
"""

import torch
from torch import Tensor


def knn_predict(
    fit_embeddings: Tensor,
    fit_labels: Tensor,
    query_embeddings: Tensor,
    k: int,
    exclude_same_index: bool = False,
    chunk_size: int = 4096,
) -> Tensor:
    """Predicted label (Q,) for every query row, by majority vote of its k nearest fit rows.

    exclude_same_index=True declares query i to be the same item as fit row i
    (leave-one-out on the fit set, or a perturbed copy of fit row i); that one row
    is never a neighbour of query i, while exact duplicates at other indices still
    are. Requires Q == N.
    """
    _check_knn_args(fit_embeddings, fit_labels, query_embeddings, k, exclude_same_index, chunk_size)
    # Sorted class ids make argmax's first-maximum rule pick the smallest label on ties.
    class_ids, fit_class_idx = fit_labels.unique(sorted=True, return_inverse=True)
    # Autocast would run the distance matmul in half precision and reorder neighbours.
    with torch.autocast(device_type=fit_embeddings.device.type, enabled=False):
        distance_dtype = _distance_dtype(fit_embeddings)
        fit = fit_embeddings.to(distance_dtype)
        fit_sq_norms = (fit * fit).sum(dim=1)
        predictions = [
            _predict_chunk(
                fit, fit_sq_norms, fit_class_idx, len(class_ids),
                query_embeddings[start:start + chunk_size].to(distance_dtype),
                k, start if exclude_same_index else None,
            )
            for start in range(0, query_embeddings.shape[0], chunk_size)
        ]
    if not predictions:
        return fit_labels.new_empty(0)
    return class_ids[torch.cat(predictions)]


def knn_accuracy(
    fit_embeddings: Tensor,
    fit_labels: Tensor,
    query_embeddings: Tensor,
    query_labels: Tensor,
    k: int,
    exclude_same_index: bool = False,
    chunk_size: int = 4096,
) -> float:
    """Fraction of queries whose kNN prediction equals query_labels."""
    if query_labels.shape != (query_embeddings.shape[0],):
        raise ValueError(
            f"query_labels must have shape ({query_embeddings.shape[0]},), got {tuple(query_labels.shape)}"
        )
    if query_labels.numel() == 0:
        raise ValueError("knn_accuracy needs at least one query")
    predicted = knn_predict(
        fit_embeddings, fit_labels, query_embeddings, k, exclude_same_index, chunk_size
    )
    return (predicted == query_labels.to(predicted.device)).float().mean().item()


def _check_knn_args(fit, fit_labels, query, k, exclude_same_index, chunk_size) -> None:
    if fit.ndim != 2 or query.ndim != 2 or fit.shape[1] != query.shape[1]:
        raise ValueError(
            f"expected fit (N, D) and query (Q, D), got {tuple(fit.shape)} and {tuple(query.shape)}"
        )
    if fit_labels.shape != (fit.shape[0],):
        raise ValueError(f"fit_labels must have shape ({fit.shape[0]},), got {tuple(fit_labels.shape)}")
    if exclude_same_index and query.shape[0] != fit.shape[0]:
        raise ValueError(
            f"exclude_same_index pairs query i with fit row i, so Q must equal N; "
            f"got Q={query.shape[0]}, N={fit.shape[0]}"
        )
    candidates = fit.shape[0] - (1 if exclude_same_index else 0)
    if not 1 <= k <= candidates:
        raise ValueError(f"k must be in [1, {candidates}] for this fit set, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _distance_dtype(fit: Tensor) -> torch.dtype:
    # float32 is enough to rank distances; keep float64 if the caller paid for it.
    return torch.float64 if fit.dtype == torch.float64 else torch.float32


def _predict_chunk(
    fit: Tensor,
    fit_sq_norms: Tensor,
    fit_class_idx: Tensor,
    n_classes: int,
    query: Tensor,
    k: int,
    own_index_offset: int | None,
) -> Tensor:
    """Class index (into the sorted class ids) predicted for each query row of this chunk."""
    sq_distances = (query * query).sum(dim=1, keepdim=True) + fit_sq_norms - 2.0 * query @ fit.T
    if own_index_offset is not None:
        rows = torch.arange(query.shape[0], device=query.device)
        sq_distances[rows, rows + own_index_offset] = float("inf")
    neighbour_idx = sq_distances.topk(k, dim=1, largest=False).indices
    neighbour_classes = fit_class_idx[neighbour_idx]
    votes = torch.zeros(query.shape[0], n_classes, device=query.device, dtype=torch.int64)
    votes.scatter_add_(1, neighbour_classes, torch.ones_like(neighbour_classes))
    return votes.argmax(dim=1)
