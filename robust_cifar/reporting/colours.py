"""One colour per method in every figure: the matplotlib PNGs and the Vega templates of `dvc plots`.

The same hex colours as the domain/range of .dvc/plots/linear_by_method.json (tests check it):
matplotlib's tab10, in the order of params.yaml's `methods`. A method added later takes the
next free tab10 colour, in the order it appears in `methods`.
"""
from __future__ import annotations

METHOD_COLOURS = {"baseline": "#1f77b4", "adversarial": "#ff7f0e", "angular": "#2ca02c",
                  "angular_adversarial": "#d62728"}
EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def method_colour(method: str, methods: list[str]) -> str:
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    extras = [name for name in methods if name not in METHOD_COLOURS]
    return EXTRA_COLOURS[extras.index(method) % len(EXTRA_COLOURS)]


# Attacks (the robustness figure), in the attack registry's order: matplotlib's Dark2, then tab10's
# grey, cyan, olive and brown.
ATTACK_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#7f7f7f", "#17becf",
                  "#bcbd22", "#8c564b")
