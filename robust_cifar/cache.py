"""The project's one cache folder: what a run leaves that is not a DVC output and changes no result.

Each stage's last wall time (the summary's provenance), the live training logs, downloaded archives,
umap-learn's compiled numba functions and concurrent_repro's logs, one subfolder each, in `.cache/` of
the working directory (the project root, where DVC runs stages), or in the folder that
$ROBUST_CIFAR_CACHE names (one cache for several clones, or a scratch disk). A leaf module.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "ROBUST_CIFAR_CACHE"


def cache_dir(name: str) -> Path:
    """The cache's subfolder `name` (not created)."""
    return Path(os.environ.get(ENV) or ".cache") / name
