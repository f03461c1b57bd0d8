"""The examples figure: test images beside their perturbed versions and the amplified difference."""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robust_cifar.conditions import KINDS  # noqa: E402

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
