"""Training curves readable offline: one PNG of every method's per-epoch dvclive logs.

`dvc plots show` draws the same curves interactively, but its page loads Vega from the network;
reports/training_curves.png needs nothing but an image viewer. The colours are the ones the
custom templates in .dvc/plots/ give each method, so the two views read alike.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ruamel.yaml import YAMLError  # noqa: E402

from robust_cifar.errors import InputError, get_back  # noqa: E402
from robust_cifar.params import parse_yaml  # noqa: E402
from robust_cifar.reporting.colours import method_colour, method_rank, stacked_width  # noqa: E402
from robust_cifar.schema import refuse  # noqa: E402
from robust_cifar.training.live_log import LOGGED_MD5, RUN, log_digest  # noqa: E402
from robust_cifar.training.methods.registry import loss_name  # noqa: E402

LINE_WIDTH = 1.6   # the learning rates of different methods coincide for many epochs: their lines stack (colours.py)

# dvclive metric names (robust_cifar/training/live_log.py LOGGED), stored as plots/metrics/<name>.tsv
TRAIN_LOSS, TRAIN_ACC, VAL_ACC, VAL_PERTURBED_ACC, LR = ("train/loss", "train/acc", "val/acc",
                                                         "val/perturbed_acc", "lr")
METRICS = (TRAIN_LOSS, TRAIN_ACC, "val/loss", VAL_ACC, VAL_PERTURBED_ACC, LR)
EVERY_EPOCH = (TRAIN_LOSS, TRAIN_ACC, LR)   # what every training logs every epoch: a log without one is damaged

Curve = tuple[np.ndarray, np.ndarray]   # (epochs, values)


# (panel title, metric, y label, which methods: None = all, else those training on the loss of this name):
# a training-loss panel per loss the methods train on (no two losses share a scale), then these
PANELS = (
    ("Training accuracy", TRAIN_ACC, "training accuracy", None),
    ("Clean validation accuracy", VAL_ACC, "validation accuracy", None),
    # each method trained on perturbations validates on its own (drawn ones, or PGD examples)
    ("Validation accuracy, perturbed as in training", VAL_PERTURBED_ACC, "perturbed validation accuracy", None),
    ("Learning rate", LR, "learning rate (log scale)", None),
)
COLUMNS = 3


def panels(losses: list[str]) -> tuple:
    return (*((f"Training loss, {kind} methods", TRAIN_LOSS, f"mean training {kind} loss", kind) for kind in losses),
            *PANELS)


def read_tsv_curve(path: Path, field: str, produced_by: str, output: Path) -> Curve:
    """dvclive's plots/metrics/<name>.tsv: a header (step, <field>[, timestamp]) and one row per step, whole
    steps and finite values. Anything else is a one-line InputError: `output` is the training log it belongs to."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            rows = list(reader)
            columns = reader.fieldnames or []
    except (csv.Error, UnicodeDecodeError, OSError) as error:
        raise refuse(path, produced_by, f"unreadable: {type(error).__name__}", output) from None
    if not {"step", field} <= set(columns):
        raise refuse(path, produced_by, f"no `step` and `{field}` columns", output)
    if not rows:
        raise refuse(path, produced_by, "no steps", output)
    try:
        steps = np.array([int(row["step"]) for row in rows])
        values = np.array([float(row[field]) for row in rows])
    except (TypeError, ValueError):   # a short row reads as None
        raise refuse(path, produced_by, f"a row without a whole `step` and a number `{field}`", output) from None
    if steps.min() < 1 or not np.isfinite(values).all():
        raise refuse(path, produced_by, f"a step below epoch 1 or a `{field}` that is not finite", output)
    if np.any(np.diff(steps) <= 0):
        raise refuse(path, produced_by, "steps that do not rise epoch by epoch (a repeated or reordered row)", output)
    if field.endswith("acc") and (values.min() < 0 or values.max() > 1):
        raise refuse(path, produced_by, f"a `{field}` outside 0..1", output)
    return steps, values


def check_run(directory: Path, produced_by: str) -> None:
    """Refuse (one line) a log that names another run than its folder: another run's log copied over this one's
    is otherwise well-formed, and would be drawn as this method's."""
    path = directory / "params.yaml"
    try:
        facts = parse_yaml(path.read_text())
    except FileNotFoundError:
        raise refuse(path, produced_by, "missing", directory) from None
    except (YAMLError, UnicodeDecodeError, OSError, ValueError) as error:
        raise refuse(path, produced_by, f"unreadable: {type(error).__name__}", directory) from None
    logged = facts.get(RUN) if isinstance(facts, dict) else None
    if logged != directory.name:
        raise refuse(path, produced_by, f"the log of {logged}, not of {directory.name}" if logged else f"no `{RUN}`",
                     directory)
    # (a log written before its digest was recorded has none)
    if LOGGED_MD5 in facts and facts[LOGGED_MD5] != log_digest(directory):
        raise refuse(directory / "plots", produced_by, "plots or metrics.json other than those the log's params.yaml "
                     "records (another run's copied in, or edited)", directory)


def last_step(path: Path) -> int | None:
    """The last epoch dvclive's metrics.json (the log's final values) records, or None where it says none."""
    try:
        step = json.loads(path.read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def read_training_curves(directory: str | Path, produced_by: str | None = None) -> dict[str, Curve]:
    """Every metric of METRICS that one training run logged (perturbed accuracy only for the methods
    trained on perturbations), keyed by dvclive name; a log with none of them, a damaged one or another run's
    is a one-line InputError naming `produced_by` (the training stage of the run the folder is named after,
    by default)."""
    directory = Path(directory)
    produced_by = produced_by or f"train@{directory.name}"
    check_run(directory, produced_by)
    base = directory / "plots" / "metrics"
    curves = {}
    for name in METRICS:
        path = base / f"{name}.tsv"
        if path.is_file():
            curves[name] = read_tsv_curve(path, name.rsplit("/", 1)[-1], produced_by, directory)
    if not curves:
        raise InputError(f"{directory} holds no training curves (no plots/metrics/*.tsv of dvclive): "
                         f"{get_back(directory, produced_by)}")
    missing = [name for name in EVERY_EPOCH if name not in curves]
    if missing:   # drawn without it, the figure would look like a method that never logged one
        raise InputError(f"{directory} lacks the {', '.join(missing)} curve{'s' * (len(missing) > 1)} every training logs "
                         f"(plots/metrics/{missing[0]}.tsv): {get_back(directory, produced_by)}")
    epochs = len(curves[EVERY_EPOCH[0]][0])   # the training's, logged at steps 1..epochs
    last = last_step(directory / "metrics.json")
    if last is not None and last != epochs:   # every curve cut at one epoch reads as a shorter training
        raise refuse(base / f"{EVERY_EPOCH[0]}.tsv", produced_by, f"epochs 1..{epochs} where the log's metrics.json "
                     f"ends at epoch {last}", directory)
    expected = np.arange(1, epochs + 1)
    for name, (steps, _) in curves.items():
        if (name in EVERY_EPOCH and not np.array_equal(steps, expected)) or not np.isin(steps, expected).all():
            raise refuse(base / f"{name}.tsv", produced_by, f"steps {steps.min()}..{steps.max()} ({len(steps)}) where "
                         f"the training logged epochs 1..{epochs}{' every epoch' if name in EVERY_EPOCH else ''}",
                         directory)
    return curves


def training_curves(curves: dict[str, dict[str, Curve]], loss_of=loss_name):
    """A grid of per-epoch curves, three panels a row, one colour per method (curves[method][metric] =
    (epochs, values)). Each loss the methods train on (`loss_of(method)`) gets a panel of its own:
    cross-entropy and the angular loss are not on one scale.
    """
    methods = list(curves)
    shown = panels(list(dict.fromkeys(loss_of(method) for method in sorted(methods))))
    rows = -(-len(shown) // COLUMNS)
    height = 4.25 * rows
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(15, height), squeeze=False)
    for axis in axes.flat[len(shown):]:
        axis.remove()
    # every panel over the epochs trained (validation may be logged every few epochs only: a lone point
    # otherwise gets an axis of fractional epochs around it)
    logged = [steps for run in curves.values() for steps, _ in run.values()]
    span = (min(map(np.min, logged)) - 0.5, max(map(np.max, logged)) + 0.5) if logged else None
    for axis, (title, metric, y_label, kind) in zip(axes.flat, shown):
        drawn = 0
        for method in methods:
            if (kind is not None and loss_of(method) != kind) or metric not in curves[method]:
                continue
            epochs, values = curves[method][metric]
            width = stacked_width(method, methods) if metric == LR else LINE_WIDTH
            # markers while epochs are few (a single epoch is no line at all); none on the stacked lr lines
            marker = "o" if len(epochs) == 1 or (len(epochs) <= 30 and metric != LR) else None
            axis.plot(epochs, values, color=method_colour(method, methods), label=method, linewidth=width,
                      marker=marker, markersize=width + 2 if metric == LR else 3,
                      zorder=2 + method_rank(method, methods) / 100)   # narrower lines on top
            drawn += 1
        if metric == LR:
            axis.set_yscale("log")
        if not drawn:
            axis.text(0.5, 0.5, "no method logged this", ha="center", va="center", transform=axis.transAxes,
                      color="grey")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.set_ylabel(y_label)
        axis.grid(True, alpha=0.3, which="both" if metric == LR else "major")
        if span is not None:
            axis.set_xlim(*span)
        axis.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)   # one epoch: a tick at 1 alone
    handles = [plt.Line2D([], [], color=method_colour(method, methods), marker="o", markersize=4, label=method)
               for method in methods]
    figure.legend(handles=handles, loc="upper center", ncol=len(methods), frameon=False, title="method",
                  bbox_to_anchor=(0.5, 1.0))
    figure.suptitle("Training curves per epoch (accuracies: head, or nearest class mean for angular methods; "
                    "training on perturbed batches for adversarial methods)", fontsize=10, y=1 - 0.64 / height)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.72 / height))   # the legend and the title above the panels
    return figure
