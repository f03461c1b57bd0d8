"""One colour per method in every figure: the matplotlib PNGs and the Vega templates of `dvc plots`.

Both give the methods of a run matplotlib's tab10 (Vega's category10: the same ten colours) in the
order of their names, which is the order of a Vega scale's domain, so the templates in .dvc/plots/
name no method and still agree with the PNGs (tests check it) in every `dvc plots` plot, since each
lists every method.
"""
from __future__ import annotations

TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
VEGA_SCHEME = "category10"   # the templates' colour scheme: TAB10


def method_rank(method: str, methods: list[str]) -> int:
    """The method's place among the run's methods in name order: its colour, and its line width where
    curves coincide."""
    return sorted(methods).index(method)


def method_colour(method: str, methods: list[str]) -> str:
    return TAB10[method_rank(method, methods) % len(TAB10)]


# Where curves of several methods coincide (learning rates, for many epochs), methods earlier in name order
# draw wider lines underneath, so every colour shows: widths evenly from the widest to the narrowest, for
# any number of methods, as the Vega point scale of .dvc/plots/linear_log_y.json ({"type": "point",
# "range": [5.0, 1.0]} over the sorted methods) draws them.
STACKED_WIDTHS = (5.0, 1.0)


def stacked_width(method: str, methods: list[str]) -> float:
    widest, narrowest = STACKED_WIDTHS
    steps = len(methods) - 1
    return widest - (widest - narrowest) * method_rank(method, methods) / steps if steps else widest


# Attacks (the robustness figure), in the attack registry's order: matplotlib's Dark2, then tab10's
# grey, cyan, olive and brown.
ATTACK_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#7f7f7f", "#17becf",
                  "#bcbd22", "#8c564b")
