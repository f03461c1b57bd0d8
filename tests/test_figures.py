"""The training curves: the offline PNG (robust_cifar/reporting/curves.py) and the dvc plots templates that draw
the same curves in `dvc plots show` (.dvc/plots/)."""
import json
import shutil
from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest
import yaml

from robust_cifar.cache import ENV
from robust_cifar.errors import InputError
from robust_cifar.reporting.colours import TAB10, VEGA_SCHEME, method_colour
from robust_cifar.reporting.colours import STACKED_WIDTHS, stacked_width
from robust_cifar.reporting.curves import LR, TRAIN_LOSS, panels, read_training_curves, training_curves
from robust_cifar.training.live_log import LOGGED, EpochLog
from robust_cifar.training.methods.registry import loss_name
from robust_cifar.training.methods.objectives import AngularEmbedding, CrossEntropyHead
from tests.methods import ANGULAR, PERTURBED_ANGULAR

LOSSES = (CrossEntropyHead.loss_name, AngularEmbedding.loss_name)   # the panels' order
PANELS = panels(list(LOSSES))

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / ".dvc" / "plots"
METHODS = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
PERTURBED = set(METHODS[1::2])   # the synthetic logs give every other method a perturbed validation curve


def synthetic_curves(epochs: int = 5) -> dict:
    steps = np.arange(1, epochs + 1)
    curves = {}
    for number, method in enumerate(METHODS):
        curves[method] = {"train/loss": (steps, 2.0 / steps + number), "train/acc": (steps, 0.1 * steps),
                          "val/loss": (steps, 2.5 / steps), "val/acc": (steps, 0.09 * steps),
                          LR: (steps, 0.01 * 0.05 ** (steps // 3))}
        if method in PERTURBED:
            curves[method]["val/perturbed_acc"] = (steps, 0.05 * steps)
    return curves


@pytest.fixture(scope="module")
def curves_figure():
    return training_curves(synthetic_curves())


def test_curves_have_one_line_per_method_in_each_panel(curves_figure):
    axes = curves_figure.axes
    assert len(axes) == len(PANELS) == 6
    by_loss = {kind: [method for method in METHODS if loss_name(method) == kind] for kind in LOSSES}
    assert all(by_loss.values())
    expected = [*by_loss.values(), METHODS, METHODS,
                [method for method in METHODS if method in PERTURBED], METHODS]
    for axis, methods in zip(axes, expected):
        assert [line.get_label() for line in axis.get_lines()] == methods, axis.get_title()


def test_a_loss_of_its_own_gets_a_panel_of_its_own():
    """A method whose objective brings a third loss is drawn on its own panel, not left out: a row more."""
    curves = {method: synthetic_curves()[METHODS[0]] for method in ("a", "b", "c")}
    figure = training_curves(curves, loss_of={"a": "first", "b": "second", "c": "third"}.get)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:3] == [f"Training loss, {kind} methods" for kind in ("first", "second", "third")]
    assert [[line.get_label() for line in axis.get_lines()] for axis in figure.axes[:3]] == [["a"], ["b"], ["c"]]
    assert len(figure.axes) == 3 + 4 and figure.get_size_inches()[1] > curves_figure_height()


def curves_figure_height() -> float:
    return training_curves(synthetic_curves()).get_size_inches()[1]


def test_each_method_keeps_its_colour_in_every_panel_and_the_legend(curves_figure):
    for axis in curves_figure.axes:
        for line in axis.get_lines():
            assert matplotlib.colors.to_hex(line.get_color()) == method_colour(line.get_label(), METHODS)
    legend = curves_figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == METHODS
    assert len({method_colour(method, METHODS) for method in METHODS}) == len(METHODS)


def test_colours_follow_name_order_in_matplotlibs_tab10_the_templates_scheme():
    """Vega's category10 is matplotlib's tab10, and a Vega domain is in name order: so are the PNGs' colours."""
    assert list(TAB10) == [matplotlib.colors.to_hex(colour) for colour in matplotlib.colormaps["tab10"].colors]
    assert [method_colour(method, ["b", "c", "a"]) for method in ("a", "b", "c")] == list(TAB10[:3])


def test_learning_rate_is_on_a_log_axis_and_every_axis_is_labelled(curves_figure):
    for axis, (title, metric, _, _) in zip(curves_figure.axes, PANELS):
        assert axis.get_yscale() == ("log" if metric == LR else "linear"), title
        if metric == LR:   # coinciding learning rates: wider lines underneath
            widths = [line.get_linewidth() for line in sorted(axis.get_lines(), key=lambda line: line.get_zorder())]
            assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)
        assert axis.get_xlabel() == "epoch"
        assert axis.get_ylabel() and axis.get_title() == title
    # the two kinds of loss are never on one axis
    loss_axes = [axis for axis, panel in zip(curves_figure.axes, PANELS) if panel[1] == TRAIN_LOSS]
    assert [{loss_name(line.get_label()) for line in axis.get_lines()} for axis in loss_axes] == [{kind} for kind in LOSSES]


def test_a_panel_no_method_logged_says_so():
    clean = next(method for method in METHODS if method not in PERTURBED)
    figure = training_curves({clean: synthetic_curves()[clean]})
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == [title for title, *_ in panels([loss_name(clean)])]   # the one loss it trains on, no other
    perturbed = figure.axes[titles.index("Validation accuracy, perturbed as in training")]
    assert perturbed.get_lines() == []
    assert "no method logged" in perturbed.texts[0].get_text()


def test_curves_are_read_from_dvclive_tsv_files(tmp_path):
    (tmp_path / "params.yaml").write_text(f"run: {tmp_path.name}\n")
    metrics = tmp_path / "plots" / "metrics"
    (metrics / "train").mkdir(parents=True)
    (metrics / "lr.tsv").write_text("step\tlr\n1\t0.01\n2\t0.0005\n")
    (metrics / "train" / "loss.tsv").write_text("step\tloss\ttimestamp\n1\t2.5\t1\n2\t1.5\t2\n")
    (metrics / "train" / "acc.tsv").write_text("step\tacc\ttimestamp\n1\t0.1\t1\n2\t0.2\t2\n")
    curves = read_training_curves(tmp_path)
    assert set(curves) == {"lr", "train/loss", "train/acc"}
    assert curves["lr"][0].tolist() == [1, 2] and curves["lr"][1].tolist() == [0.01, 0.0005]
    assert curves["train/loss"][1].tolist() == [2.5, 1.5]


def test_curves_read_the_names_the_training_logger_writes():
    read = {metric for _, metric, _, _ in PANELS}
    assert read <= set(LOGGED.values())


def test_another_runs_plots_copied_into_a_log_are_refused(tmp_path, monkeypatch):
    """Another run's plots/ and metrics.json copied into this run's log were drawn as this run's curves: its
    params.yaml, the only file that names the run, was this run's."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    for run, accuracy in (("this-0", 0.25), ("other-0", 0.75)):
        log = EpochLog(f"reports/training/{run}")
        log.describe(run)
        for epoch in (1, 2):
            log({"epoch": epoch, "train_loss": 2.0 / epoch, "train_acc": accuracy, "lr": 0.01, "val_acc": accuracy})
        log.close()
    this, other = Path("reports/training/this-0"), Path("reports/training/other-0")
    assert read_training_curves(this)["train/acc"][1].tolist() == [0.25, 0.25]
    shutil.rmtree(this / "plots")
    shutil.copytree(other / "plots", this / "plots")
    shutil.copy(other / "metrics.json", this / "metrics.json")
    with pytest.raises(InputError, match=r"^reports/training/this-0/plots does not hold what train@this-0 writes "
                                         r"\(plots or metrics.json other than those the log's params.yaml records"):
        read_training_curves(this)
    (this / "params.yaml").write_text("run: this-0\n")   # a log written before the digest: read as it is
    assert read_training_curves(this)["train/acc"][1].tolist() == [0.75, 0.75]


# --- the dvc plots templates ---------------------------------------------------------------------

def template(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text())


def encodings(spec, channel: str) -> list[dict]:
    """Every encoding of `channel` anywhere in a (layered) Vega-Lite spec."""
    found = []
    if isinstance(spec, dict):
        if isinstance(spec.get("encoding"), dict) and channel in spec["encoding"]:
            found.append(spec["encoding"][channel])
        for value in spec.values():
            found += encodings(value, channel)
    elif isinstance(spec, list):
        for value in spec:
            found += encodings(value, channel)
    return found


@pytest.mark.parametrize("name, y_scale", [("linear_by_method", {"zero": False}), ("linear_log_y", {"type": "log"})])
def test_templates_colour_by_method_in_the_curves_colours(name, y_scale):
    spec = template(name)
    colours = encodings(spec, "color")
    assert colours and all(colour["field"] == "method" for colour in colours)
    assert all(colour["scale"] == {"scheme": VEGA_SCHEME} for colour in colours)   # no method named
    assert all(y["scale"] == y_scale for y in encodings(spec, "y") if "field" in y)
    assert all(dash["field"] == "rev" for dash in encodings(spec, "strokeDash"))
    assert [step["as"] for step in spec["transform"]][:2] == ["path_parts", "method"]


def test_the_log_template_stacks_line_widths_in_the_curves_order():
    """Coinciding learning rates: methods earlier in name order wider underneath, as on the PNG's panel."""
    widths = encodings(template("linear_log_y"), "strokeWidth")
    # a point scale spreads the methods evenly over [widest, narrowest] (a nominal one with a longer range uses
    # only its first two values: rendered with vl-convert, five methods drew 5.0 to 3.8 in steps of 0.3)
    assert widths and all(width == {"field": "method", "type": "nominal", "legend": None,
                                    "scale": {"type": "point", "range": list(STACKED_WIDTHS)}} for width in widths)
    for count in (1, 2, 5, 6, 11):   # any number of methods: each its own width, the first the widest
        methods = [f"m{rank:02d}" for rank in range(count)]
        drawn = [stacked_width(method, methods) for method in methods]
        assert drawn[0] == max(STACKED_WIDTHS) and drawn == sorted(set(drawn), reverse=True)
        assert count == 1 or drawn[-1] == min(STACKED_WIDTHS)
    assert encodings(template("linear_by_method"), "strokeWidth") == []
    for template_name in ("linear_by_method", "linear_log_y"):
        assert not any(method in json.dumps(template(template_name)) for method in METHODS)


def plot_definitions() -> dict[str, dict]:
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    return {name: definition for entry in plots if isinstance(entry, dict) for name, definition in entry.items()}


def test_every_curve_shows_every_method_so_the_templates_colours_match_the_pngs():
    definitions = plot_definitions()
    curves = {name: d for name, d in definitions.items() if d.get("template") != "confusion"}
    assert curves
    for name, definition in curves.items():
        assert (TEMPLATES / f"{definition['template']}.json").is_file(), name
        # the run folder is <method>-${seeds.figures}
        methods = [Path(path).parts[2].removesuffix("-${seeds.figures}") for path in definition["y"]]
        assert methods == METHODS, name   # a Vega domain of fewer methods would colour them differently
        # losses of two kinds and coinciding learning rates: a log axis with stacked widths
        expected = "linear_log_y" if all(path.endswith(("/lr.tsv", "/loss.tsv")) for path in definition["y"]) else "linear_by_method"
        assert definition["template"] == expected, name


def test_dvc_render_fills_the_template_with_each_file_as_its_own_series():
    """The spec `dvc plots show` would write: no optional anchors, so every datapoint keeps its filename."""
    from dvc_render import VegaRenderer

    datapoints = [{"step": str(step), "loss": str(1.0 / step), "rev": "workspace", "filename": f"{method}/plots/metrics/train/loss.tsv",
                   "field": "loss"} for method in (ANGULAR, PERTURBED_ANGULAR) for step in (1, 2)]
    renderer = VegaRenderer(datapoints, "train loss", template="linear_by_method", template_dir=str(TEMPLATES),
                            x="step", y="loss", title="t", x_label="epoch", y_label="loss",
                            anchors_y_definitions=[{"filename": point["filename"], "field": "loss"}
                                                   for point in datapoints[::2]])
    spec = renderer.get_filled_template()
    assert "DVC_METRIC" not in json.dumps(spec)
    assert {point["filename"] for point in spec["data"]["values"]} == {point["filename"] for point in datapoints}
    assert spec["layer"][0]["transform"][0]["groupby"] == ["rev", "method"]


def test_every_attack_keeps_a_style_of_its_own_past_the_palettes_colours():
    """A twelfth attack shared the first one's colour; now colours repeat only with another line style."""
    from robust_cifar.reporting.colours import ATTACK_PALETTE
    from robust_cifar.reporting.figures import attack_style
    names = tuple(f"attack{number}" for number in range(2 * len(ATTACK_PALETTE) + 3))
    styles = [tuple(attack_style(name, names).values()) for name in names]
    assert len(set(styles)) == len(names)
    assert styles[0] == (ATTACK_PALETTE[0], "-") and styles[len(ATTACK_PALETTE)][1] != "-"


def test_a_lone_validation_point_is_drawn_on_the_epochs_trained():
    """Validation every few epochs can leave one point: its panel spanned fractional epochs around it."""
    curves = synthetic_curves(epochs=5)
    for run in curves.values():
        run["val/acc"] = (np.array([5]), np.array([0.4]))
    figure = training_curves(curves)
    assert {axis.get_xlim() for axis in figure.axes} == {(0.5, 5.5)}


def test_one_epoch_is_ticked_as_epoch_1_alone():
    """The epoch axis read 0.6 ... 1.4 for a training of one epoch."""
    figure = training_curves(synthetic_curves(epochs=1))
    figure.canvas.draw()
    for axis in figure.axes:
        low, high = axis.get_xlim()
        assert [tick for tick in axis.get_xticks() if low <= tick <= high] == [1]
