"""Seed replicates: metrics as mean and spread over training seeds, and paired comparisons with 95% intervals.

A single training seed cannot tell a one-point difference from run-to-run noise. Every method is
trained once per seed in `seeds.train`; metrics are summarised per key as mean and standard
deviation over seeds, and a method is compared with the baseline seed by seed (same seed, same
split, same evaluation plan), so the comparison is a paired difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

# Two-sided 95% quantiles of Student's t by degrees of freedom, 1 to 30 (scipy would be a dependency for this alone).
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.959964


def t_quantile(degrees_of_freedom: int) -> float:
    """The 97.5% quantile of Student's t: tabulated to 30 degrees of freedom, then its Cornish-Fisher expansion
    in 1/df (Abramowitz and Stegun, chapter 26; within 1e-5 above 30, where the normal's 1.96 is too narrow)."""
    if degrees_of_freedom < 1:
        raise ValueError("an interval needs at least two replicates")
    if degrees_of_freedom <= len(T_95):
        return T_95[degrees_of_freedom - 1]
    z, n = Z_975, degrees_of_freedom
    return (z + (z**3 + z) / (4 * n) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3))


def leaves(tree: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def nest(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def aggregate(per_seed: dict[int, dict]) -> dict:
    """{seed: metrics tree} -> the same tree with {"mean", "std"} at every leaf, plus `seeds` (how many).

    The std is the sample standard deviation (n - 1); with one seed it is 0 and says nothing.
    Only keys present for every seed are kept.
    """
    if not per_seed:
        raise ValueError("no seeds to aggregate")
    flats = {seed: leaves(tree) for seed, tree in sorted(per_seed.items())}
    common = set.intersection(*(set(flat) for flat in flats.values()))
    summary = {}
    for key in sorted(common):
        values = np.array([flats[seed][key] for seed in flats], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[key] = {"mean": round(float(values.mean()), 6), "std": round(std, 6)}
    return {**nest(summary), "seeds": len(per_seed)}   # a number: DVC's metrics show no lists


@dataclass(frozen=True)
class PairedDifference:
    """method minus baseline, in accuracy points (percent)."""
    mean: float
    half_width: float | None   # of the 95% interval over seeds; None with a single seed
    n: int

    @property
    def distinguishable(self) -> bool:
        return self.half_width is not None and abs(self.mean) > self.half_width

    def text(self) -> str:
        if self.half_width is None:
            return f"{self.mean:+.1f} points (one seed: no interval)"
        return f"{self.mean:+.1f} +- {self.half_width:.1f} points"

    def judged(self) -> str:
        """The text, and whether its interval excludes zero (nothing to say with one seed)."""
        if self.half_width is None:
            return self.text()
        return f"{self.text()} ({'' if self.distinguishable else 'not '}distinguishable from zero)"


def paired_difference(method: Iterable[float], baseline: Iterable[float]) -> PairedDifference:
    """Mean and 95% t-interval of the per-seed differences (accuracies given as fractions)."""
    differences = 100 * (np.asarray(list(method), dtype=np.float64) - np.asarray(list(baseline), dtype=np.float64))
    if len(differences) == 0:
        raise ValueError("no paired seeds")
    if len(differences) == 1:
        return PairedDifference(float(differences[0]), None, 1)
    half = t_quantile(len(differences) - 1) * differences.std(ddof=1) / math.sqrt(len(differences))
    return PairedDifference(float(differences.mean()), float(half), len(differences))


# The bootstrap's size and seed are constants, not params: they move only the interval's last digit,
# and fixed they let a rerun print the same interval (2,000 resamples: the percentile interval's usual size).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_difference(method_correct: np.ndarray, baseline_correct: np.ndarray,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """Mean difference in accuracy points and its 95% percentile interval, resampling test images.

    Inputs are (seeds, images) booleans: whether each seed's model got each image right. The same
    image resample is applied to both methods (paired), and the mean over seeds is taken inside.
    """
    method_correct = np.atleast_2d(method_correct).astype(np.float64)
    baseline_correct = np.atleast_2d(baseline_correct).astype(np.float64)
    per_image = (method_correct - baseline_correct).mean(axis=0)   # mean over seeds, per image
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_image), size=(resamples, len(per_image)))
    means = per_image[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return 100 * float(per_image.mean()), 100 * float(low), 100 * float(high)


def verdict(method: str, perturbed: PairedDifference, clean: PairedDifference,
            robust: PairedDifference | None = None) -> str:
    """One sentence from the numbers: does `method` change perturbed accuracy, and at what clean cost."""
    sentence = _perturbed_verdict(method, perturbed, clean)
    if robust is not None:
        sentence = sentence[:-1] + f"; robust accuracy (worst case over attacks) {robust.judged()}."
    return sentence


def _perturbed_verdict(method: str, perturbed: PairedDifference, clean: PairedDifference) -> str:
    if perturbed.half_width is None:
        return (f"{method} changes perturbed test accuracy by {perturbed.text()} over the baseline "
                f"(clean {clean.text()}): train more seeds to tell this from noise.")
    if not perturbed.distinguishable:
        return (f"{method} is not distinguishable from the baseline on perturbed test accuracy "
                f"({perturbed.text()}, 95% interval over {perturbed.n} seeds), with clean accuracy {clean.judged()}.")
    direction = "raises" if perturbed.mean > 0 else "lowers"
    return (f"{method} {direction} perturbed test accuracy over the baseline by {abs(perturbed.mean):.1f} "
            f"+- {perturbed.half_width:.1f} points (95% interval over {perturbed.n} seeds), "
            f"with clean accuracy {clean.judged()}.")
