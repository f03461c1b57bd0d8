"""Figures a reader looks at rather than reads: grouped accuracy bars and perturbed examples."""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robust_cifar.colours import method_colour  # noqa: E402
from robust_cifar.conditions import KINDS  # noqa: E402

CONDITION_COLOURS = {"clean": "#4c72b0", "perturbed": "#dd8452", "transfer": "#c44e52"}


def accuracy_bars(all_metrics: dict[str, dict], split: str = "test"):
    """Grouped bars: per method and decision rule, clean vs perturbed vs transfer accuracy
    (mean over training seeds, with the std as an error bar)."""
    groups = [(method, decision) for method, metrics in all_metrics.items() for decision in ("head", "knn")
              if decision in metrics[split]["clean"]]
    figure, axis = plt.subplots(figsize=(1.6 * len(groups) + 2, 4.5))
    width = 0.8 / len(CONDITION_COLOURS)
    for offset, (condition, colour) in enumerate(CONDITION_COLOURS.items()):
        entries = [all_metrics[method][split][condition][decision] for method, decision in groups]
        positions = np.arange(len(groups)) + (offset - 1) * width
        bars = axis.bar(positions, [100 * entry["mean"] for entry in entries], width, label=condition, color=colour,
                        yerr=[100 * entry["std"] for entry in entries], error_kw={"elinewidth": 0.8, "capsize": 2})
        axis.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axis.set_xticks(np.arange(len(groups)),
                    [f"{method}\n{'head' if decision == 'head' else '3-NN'}" for method, decision in groups])
    axis.set_ylabel(f"{split} accuracy (%)")
    axis.set_ylim(0, 105)
    axis.set_title(f"{split.capitalize()} accuracy: clean vs perturbed (white-box FGM) vs transfer (FGM from the baseline)")
    axis.legend(loc="upper right", ncol=3, frameon=False)
    figure.tight_layout()
    return figure


def difference_caption(amplify: float) -> str:
    return (f"difference = 0.5 + {amplify:g} x (perturbed - original), per colour channel: mid-grey where the "
            "image is unchanged; brighter, darker or coloured where a perturbation moved the pixels "
            f"(amplified {amplify:g}x, clipped to [0, 1]).")


def perturbation_examples(clean: np.ndarray, perturbed: np.ndarray, gates: np.ndarray, labels: np.ndarray,
                          class_names, amplify: float = 4.0):
    """Rows of original | perturbed | amplified difference, each labelled with what hit the image.

    Images are float (N, 3, H, W) in [0, 1]; gates bool (N, 3) in perturb.KINDS order.
    """
    figure, axes = plt.subplots(len(clean), 3, figsize=(5.6, 1.75 * len(clean) + 0.9), squeeze=False)
    for row, (before, after, hit, label) in enumerate(zip(clean, perturbed, gates, labels)):
        applied = " + ".join(kind for kind, on in zip(KINDS, hit) if on) or "none"
        difference = np.clip(0.5 + amplify * (after - before), 0, 1)
        for column, (image, title) in enumerate(((before, f"{class_names[label]}"), (after, f"perturbed: {applied}"),
                                                 (difference, f"difference x{amplify:g}\n(grey = unchanged)"))):
            axis = axes[row][column]
            axis.imshow(np.transpose(image, (1, 2, 0)), interpolation="nearest")
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.suptitle("Test images: original | perturbed | difference", fontsize=9)
    figure.text(0.5, 0.005, textwrap.fill(difference_caption(amplify), 80), ha="center", va="bottom", fontsize=7)
    figure.tight_layout(rect=(0, 0.55 / (1.75 * len(clean) + 0.9), 1, 1))
    return figure
