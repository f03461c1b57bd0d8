"""UMAP maps of the embeddings: fit on clean training embeddings, drawn as a split x condition grid."""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np

from robust_cifar.cache import cache_dir
from robust_cifar.errors import DiskFullError, UserError
from robust_cifar.outputs import NO_SPACE
from robust_cifar.params import Params, bounded_int, real, whole

PANEL_CONDITIONS = ("clean", "perturbed")
SPREAD = 1.0  # umap-learn's default; min_dist must not exceed it


@dataclass(frozen=True)
class UmapConfig:
    fit_samples: int    # clean training embeddings the map is fit on (0 = all)
    plot_samples: int   # points drawn per panel
    n_neighbors: int
    min_dist: float

    @classmethod
    def from_params(cls, params: Params) -> "UmapConfig":
        return cls(fit_samples=params.value("umap.fit_samples", whole(lambda v: v == 0 or 10 <= v <= 1_000_000,
                                                                       "0 (all) or a whole number from 10 to 1,000,000")),
                   plot_samples=params.value("umap.plot_samples", bounded_int(1, 100_000, "points per panel")),
                   n_neighbors=params.value("umap.n_neighbors", whole(lambda v: 2 <= v <= 200,
                                                                      "a whole number from 2 to 200")),
                   min_dist=params.value("umap.min_dist", real(lambda v: 0 <= v <= SPREAD,
                                                               f"a number in [0, {SPREAD:g}] (UMAP's spread)")))


def import_umap_with_compile_cache():
    """umap-learn, with every numba function it defines compiled once and cached on disk.

    umap-learn marks only one of its many jitted functions `cache=True`, so each process
    recompiled them (~30 s on 2 cores, more than the fit itself); the compiled code goes to the
    project's cache (robust_cifar/cache.py) unless NUMBA_CACHE_DIR names another. Defaulting numba's
    decorators to cache=True while umap is first imported brings a warm run to ~3 s.
    """
    import sys

    if "umap" in sys.modules:
        return sys.modules["umap"]
    # numba reads its cache folder when it is first imported: here, not when this module is
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir("numba").resolve()))
    import numba

    originals = numba.njit, numba.jit

    def caching(decorator):
        @functools.wraps(decorator)
        def wrapper(*args, **kwargs):
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)
        return wrapper

    numba.njit, numba.jit = caching(numba.njit), caching(numba.jit)
    try:
        import umap
    except OSError as error:   # numba writes the compiled code as umap defines it: a full or read-only cache
        where = os.environ["NUMBA_CACHE_DIR"]
        problem = UserError if error.errno not in NO_SPACE else DiskFullError
        raise problem(f"cannot write umap-learn's compiled code to {where} ({error.strerror}): free space there, or "
                      f"point $NUMBA_CACHE_DIR (or $ROBUST_CIFAR_CACHE) at another folder") from None
    finally:
        numba.njit, numba.jit = originals
    return umap


def neighbours_used(n_neighbors: int, points: int) -> int:
    """UMAP's n_neighbors on `points` fitted points: at most the other points there are."""
    return min(n_neighbors, points - 1)


def fit_umap(embeddings: np.ndarray, n_neighbors: int, min_dist: float, seed: int):
    umap = import_umap_with_compile_cache()

    # random_state makes UMAP deterministic (and single-threaded)
    reducer = umap.UMAP(n_neighbors=neighbours_used(n_neighbors, len(embeddings)), min_dist=min_dist,
                        random_state=seed, metric="euclidean", n_jobs=1)
    with warnings.catch_warnings():
        # pynndescent's two largest functions cannot be cached; numba says so on every fit
        warnings.filterwarnings("ignore", message=".*Cannot cache compiled function")
        reducer.fit(embeddings)
    return reducer


def sample_indices(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `limit` sorted indices; all of them when limit is 0 or at least n."""
    if limit == 0 or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def draw_grid(panels: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], class_names, title: str):
    """panels[(split, condition)] = (2-d points, labels); rows are splits, columns conditions."""
    import matplotlib   # here: check_params reads UmapConfig, and pyplot takes half a second to import
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
