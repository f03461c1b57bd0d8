"""The summary's figures: accuracy bars (clean, perturbed, transfer) and robust accuracy against attack size."""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robust_cifar.evaluation.attack_registry import ATTACKS, eps_of  # noqa: E402
from robust_cifar.reporting.colours import ATTACK_PALETTE, method_colour  # noqa: E402


CONDITION_COLOURS = {"clean": "#4c72b0", "perturbed": "#dd8452", "transfer": "#c44e52"}


def accuracy_bars(all_metrics: dict[str, dict], labels: dict[str, str], split: str = "test"):
    """Grouped bars: per method and decision rule (named by `labels`, conditions.decision_labels), clean vs
    perturbed vs transfer accuracy (mean over training seeds, with the std as an error bar)."""
    groups = [(method, decision) for method, metrics in all_metrics.items() for decision in labels
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
                    [f"{method}\n{labels[decision]}" for method, decision in groups])
    axis.set_ylabel(f"{split} accuracy (%)")
    axis.set_ylim(0, 105)
    # the legend above the bars, under the title: inside, it covered the labels of bars near 100%
    axis.set_title(f"{split.capitalize()} accuracy: clean vs perturbed (white-box FGM) vs transfer "
                   "(FGM from the baseline)", pad=20)
    axis.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=8)
    figure.tight_layout()
    return figure


ATTACK_DASHES = ("-", "--", ":")   # the palette's colours used up, the next attacks reuse them dashed


def attack_style(name: str, names: tuple[str, ...] = tuple(ATTACKS)) -> dict:
    """Its own colour and line style for each registered attack, in registry order."""
    index = names.index(name)
    return {"color": ATTACK_PALETTE[index % len(ATTACK_PALETTE)],
            "linestyle": ATTACK_DASHES[index // len(ATTACK_PALETTE) % len(ATTACK_DASHES)]}


TITLE_CHARACTERS_PER_INCH = 14   # of a 9-point title
MAX_EPS_LABELS = 8   # on a panel 3.3 inches wide; more eps values are ticked, and every n-th labelled


def _eps_axis(axis, eps_values: set[float]) -> None:
    axis.set_xscale("symlog", linthresh=1)
    if eps_values:   # ticks at the eps values that were run, a label on every one only where they do not collide
        values = sorted(eps_values)
        every = -(-len(values) // MAX_EPS_LABELS)
        labelled = set(values[::-1][::every]) | {values[0]}   # the largest and the smallest always labelled
        axis.set_xticks(values, [f"{value:.4g}" if value in labelled else "" for value in values], fontsize=7,
                        rotation=0 if len(values) <= MAX_EPS_LABELS else 45)
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)


def _curve(points: dict[str, dict], decision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eps, mean %, std %) of {eps key: {decision: {mean, std}}}, in increasing eps."""
    rows = sorted((eps_of(key), entry[decision]) for key, entry in points.items() if decision in entry)
    return (np.array([eps for eps, _ in rows]), np.array([100 * entry["mean"] for _, entry in rows]),
            np.array([100 * entry["std"] for _, entry in rows]))


def left_after_each_attack(robustness: dict, decision: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A cascade's bookkeeping as curves: {attack: (eps, % still right after it and every attack before it
    in registry order)}, at every eps of the robust curve. The last one is the robust accuracy."""
    eps = np.array(sorted(eps_of(key) for key in robustness["curve"]))
    clean, taken, lines = robustness["clean"][decision]["mean"], np.zeros(len(eps)), {}
    for name in ATTACKS:
        ran = [(eps_of(key), entry[decision]["mean"]) for key, entry in robustness.get("broken", {}).get(name, {}).items()
               if decision in entry]
        if not ran:
            continue
        # each entry counts what the attack broke first at that eps or a smaller one: the latest one counts
        taken = taken + np.array([max((value for at, value in ran if at <= point), default=0.0) for point in eps])
        lines[name] = (eps, 100 * (clean - taken))
    return lines


def robustness_curves(all_metrics: dict[str, dict], labels: dict[str, str]):
    """Robust test accuracy against attack size, one row per decision (head, k-NN; named by `labels`).

    First column: every method's robust accuracy (right on the clean image and under every attack at
    every eps up to this one), mean over seeds with the std as a band. Then one column per method:
    each attack's own accuracy (thin, one colour per attack, starting from clean accuracy at 0) under
    its robust accuracy (black): the gap between the lowest thin line and the black one is what
    combining attacks adds. A cascade (`attack.cascade`) measures no attack alone: there the thin lines
    are what was still right after each attack in turn (registry order), down to the black one.
    """
    methods = [method for method, metrics in all_metrics.items() if metrics.get("robustness")]
    # at least three panels wide: the title and the legend need the room (one method's figure clipped them)
    figure, axes = plt.subplots(len(labels), 1 + len(methods), figsize=(3.3 * max(3, 1 + len(methods)), 6.6),
                                sharex=True, sharey=True, squeeze=False)
    used_attacks: list[str] = []
    cascade = any("broken" in all_metrics[method]["robustness"] for method in methods)
    for row, (decision, label) in enumerate(labels.items()):
        overview, eps_values = axes[row][0], set()
        for column, method in enumerate(methods, start=1):
            robustness, axis = all_metrics[method]["robustness"], axes[row][column]
            if decision not in robustness["clean"]:
                axis.text(0.5, 0.5, "no head", ha="center", va="center", transform=axis.transAxes, color="grey")
                axis.set_title(f"{method}: {label}", fontsize=8)
                _eps_axis(axis, set())
                continue
            eps, mean, std = _curve(robustness["curve"], decision)
            eps_values.update(eps.tolist())
            colour = method_colour(method, list(all_metrics))
            overview.plot(eps, mean, "-", color=colour, marker="o", markersize=3, label=method)
            overview.fill_between(eps, mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
            clean = robustness["clean"][decision]
            for name, (attack_eps, left) in left_after_each_attack(robustness, decision).items():
                axis.plot(attack_eps, left, **attack_style(name), linewidth=0.9, marker=".", markersize=4, alpha=0.85)
                used_attacks += [name] if name not in used_attacks else []
            for name in (name for name in ATTACKS if name in robustness.get("attacks", {})):
                points = robustness["attacks"][name]
                # an attack run at one eps only (the study's) is a point, not a line from clean accuracy
                attack_eps, attack_mean, _ = _curve({"eps_0": {decision: clean}, **points} if len(points) > 1
                                                    else points, decision)
                style = attack_style(name) if len(points) > 1 else {**attack_style(name), "linestyle": "none"}
                axis.plot(attack_eps, attack_mean, **style, linewidth=0.9, marker="." if len(points) > 1 else "D",
                          markersize=4, alpha=0.85)
                used_attacks += [name] if name not in used_attacks else []
            # a marker too: with one eps the line is a point
            axis.plot(eps, mean, "-", color="black", linewidth=2, marker="o", markersize=3,
                      label="robust (every attack)")
            axis.set_title(f"{method}: {label}", fontsize=8)
            _eps_axis(axis, set(eps.tolist()))
        overview.set_title(f"robust accuracy, {label}", fontsize=8)
        overview.set_ylabel("test accuracy (%)")
        _eps_axis(overview, eps_values)
        if overview.get_legend_handles_labels()[0]:
            overview.legend(fontsize=7, frameon=False)
    for axis in axes[-1]:
        axis.set_xlabel("L-inf eps (x 1/255)", fontsize=8)
    handles = [plt.Line2D([], [], **attack_style(name), marker=".", label=name)
               for name in ATTACKS if name in used_attacks]
    handles.append(plt.Line2D([], [], color="black", linewidth=2, marker="o", markersize=3,
                              label="robust: right under every attack"))
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    title = ("Robust test accuracy: true labels, clean-correct, worst case over every attack at every eps up to this "
             "one" + (" (thin: what a cascade left after each attack in turn)" if cascade else
                      " (thin: each attack alone; a diamond: run at the study's eps only)"))
    # on two lines where one would run past the figure's edges (three panels or fewer)
    figure.suptitle(textwrap.fill(title, int(figure.get_figwidth() * TITLE_CHARACTERS_PER_INCH)), fontsize=9)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return figure
