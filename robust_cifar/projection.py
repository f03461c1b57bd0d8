"""UMAP maps of the embeddings: fit on clean training embeddings, drawn as a split x condition grid."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# umap-learn compiles with numba on first use (~40 s); a cache inside the project keeps reruns fast.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(".cache/numba").resolve()))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANEL_CONDITIONS = ("clean", "perturbed")


def fit_umap(embeddings: np.ndarray, n_neighbors: int, min_dist: float, seed: int):
    import umap  # imported late: it is slow to import and only this stage needs it

    # random_state makes UMAP deterministic (and single-threaded); n_neighbors cannot exceed the data
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(embeddings) - 1), min_dist=min_dist,
                        random_state=seed, metric="euclidean")
    reducer.fit(embeddings)
    return reducer


def sample_indices(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `limit` sorted indices; all of them when limit is 0 or at least n."""
    if limit == 0 or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def draw_grid(panels: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], class_names, title: str):
    """panels[(split, condition)] = (2-d points, labels); rows are splits, columns conditions."""
    splits = list(dict.fromkeys(split for split, _ in panels))
    conditions = list(dict.fromkeys(condition for _, condition in panels))
    figure, axes = plt.subplots(len(splits), len(conditions), figsize=(5 * len(conditions), 4.5 * len(splits)),
                                squeeze=False, sharex=True, sharey=True)
    colours = plt.get_cmap("tab10")
    for row, split in enumerate(splits):
        for column, condition in enumerate(conditions):
            axis = axes[row][column]
            points, labels = panels[(split, condition)]
            for label, name in enumerate(class_names):
                chosen = labels == label
                axis.scatter(points[chosen, 0], points[chosen, 1], s=3, alpha=0.6, color=colours(label % 10),
                             label=name, rasterized=True)
            axis.set_title(f"{split}, {condition} ({len(labels)} points)")
            axis.set_xticks([])
            axis.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, loc="center right", markerscale=4, frameon=False, title="class")
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0, 0.86, 0.97))
    return figure
