"""Reading the per-seed results that eval writes (reports/seeds/<method>/<seed>.json and .csv)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from robust_cifar.errors import InputError, get_back


def read_json(path: Path, produced_by: str) -> dict:
    if not path.is_file():
        raise InputError(f"{path} not found: run `dvc repro {produced_by}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{path} is not valid JSON (truncated?): {get_back(path, produced_by)}") from None


def read_seed_metrics(folder: Path, seeds: list[int], produced_by: str) -> dict[int, dict]:
    """{seed: metrics} of one method for exactly `seeds` (files of seeds no longer listed are ignored)."""
    return {seed: read_json(folder / f"{seed}.json", f"{produced_by}-{seed}") for seed in sorted(seeds)}


def read_runs(seed_results: Path, robustness_results: Path, seeds: list[int], method: str) -> dict[int, dict]:
    """{seed: eval's metrics with the robustness stage's results under "robustness"} of one method."""
    metrics = read_seed_metrics(seed_results, seeds, f"eval@{method}")
    robustness = read_seed_metrics(robustness_results, seeds, f"robustness@{method}")
    return {seed: {**metrics[seed], "robustness": robustness[seed]} for seed in metrics}


def read_correct(path: Path, produced_by: str) -> dict[str, np.ndarray]:
    """Per test image, whether the method's own decision was right: {"clean": bool (N,), "perturbed": ...}."""
    if not path.is_file():
        raise InputError(f"{path} not found: run `dvc repro {produced_by}`")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"actual", "clean", "perturbed"} <= set(rows[0]):
        raise InputError(f"{path} is not a predictions table: {get_back(path, produced_by)}")
    actual = np.array([row["actual"] for row in rows])
    return {condition: np.array([row[condition] for row in rows]) == actual for condition in ("clean", "perturbed")}
