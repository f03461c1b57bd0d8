"""Robust accuracy (robust_cifar.evaluation.robustness): the definition, the bookkeeping, the config, the
sanity gates and the figure."""
import re

import matplotlib.colors
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from robust_cifar.compute import Compute
from robust_cifar.conditions import decision_labels
from robust_cifar.errors import ParamsError
from robust_cifar.evaluation.attack_registry import ATTACKS, PlannedAttack, eps_key
from robust_cifar.evaluation.robustness import RUNS, RobustnessConfig, Victim, robust_accuracy
from robust_cifar.model import CifarResNet18
from robust_cifar.params import Params
from robust_cifar.reporting.colours import method_colour
from robust_cifar.reporting.figures import MAX_EPS_LABELS, left_after_each_attack, robustness_curves
from robust_cifar.reporting.summarize import gate_failures, gate_lines, robust_rows, unchecked_gates
from robust_cifar.training.methods.registry import REFERENCE_METHOD
from tests.archives import make_images
from tests.methods import ANGULAR
from tests.test_attacks import SETTINGS

STUDY = decision_labels(3)

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Compute.create("cpu", fast=False)
NUM_CLASSES = 10


def config(eps=(0.0, 4.0, 8.0, 32.0), study=8.0, names=tuple(ATTACKS), at=None, cascade=False) -> RobustnessConfig:
    return RobustnessConfig(eps_255=eps, study_eps_255=study, test_images=0, attacks=tuple(
        PlannedAttack(name, (at or {}).get(name, "sweep"), SETTINGS[name]) for name in names), cascade=cascade)


def tiny_model(seed: int) -> CifarResNet18:
    torch.manual_seed(seed)
    return CifarResNet18(width=4, embedding_dim=16, num_classes=NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def data():
    train_images, train_labels = make_images(6, NUM_CLASSES, seed=0)
    test_images, test_labels = make_images(3, NUM_CLASSES, seed=1)
    return torch.from_numpy(train_images), torch.from_numpy(train_labels), torch.from_numpy(test_images), \
        torch.from_numpy(test_labels)


def victim_of(model, data, has_head=True, transfer_source=None) -> Victim:
    train_images, train_labels = data[0], data[1]
    with torch.no_grad():
        fit = model.embed(train_images.float() / 255)
    return Victim(model, model, has_head, fit, train_labels, 3, NUM_CLASSES, transfer_source)


# ---------------------------------------------------------------------------------------------
# The definition
# ---------------------------------------------------------------------------------------------


class RightOnlyWhenMoved(torch.nn.Module):
    """Wrong on the exact clean test images, right on everything else: any attack that moves an image
    "flips it into its true class". Only the clean-correct condition keeps its robust accuracy at 0."""

    def __init__(self, clean: torch.Tensor, labels: torch.Tensor):
        super().__init__()
        self.clean, self.labels = clean.flatten(1), labels

    def embed_and_classify(self, x):
        distances = (x.flatten(1)[:, None] - self.clean[None]).pow(2).sum(-1)
        nearest = distances.argmin(1)
        exact = distances.min(1).values == 0
        predicted = torch.where(exact, (self.labels[nearest] + 1) % NUM_CLASSES, self.labels[nearest])
        logits = 10 * F.one_hot(predicted, NUM_CLASSES).float() + 1e-3 * x.flatten(1)[:, :NUM_CLASSES]
        return F.normalize(logits, dim=1), logits

    def embed(self, x):
        return self.embed_and_classify(x)[0]

    def forward(self, x):
        return self.embed_and_classify(x)[1]


def test_an_image_wrong_on_the_clean_input_is_never_robust_whatever_the_attack_does(data):
    _, _, images, labels = data
    model = RightOnlyWhenMoved(images.float() / 255, labels)
    victim = Victim(model, model, True, model.embed(images.float() / 255), labels, 1, NUM_CLASSES)
    report, per_image = robust_accuracy(config(names=("pgd", "apgd_ce")), victim, images, labels, CPU, 16, seed=0)
    # the attacks did move every image into its true class ...
    moved = next(RUNS["pgd"](SETTINGS["pgd"], victim, images.float() / 255, labels, 8 / 255, torch.Generator()))
    assert (model(moved).argmax(1) == labels).all()
    # ... and still nothing counts: wrong on the clean image, so never robust
    assert report["clean"]["head"] == 0 and report["robust"]["head"] == 0
    assert all(point["head"] == 0 for point in report["curve"].values())
    assert all(point["head"] == 0 for points in report["attacks"].values() for point in points.values())
    assert not per_image["robust.head"].any()


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])   # a second draw: 7 s
def test_robust_accuracy_is_below_clean_below_every_attack_and_never_rises_with_eps(data, seed):
    model, source = tiny_model(seed), tiny_model(seed + 10)
    victim = victim_of(model, data, transfer_source=source)
    sweep = config(at={"apgd_t": "study"})
    # 20 of the 30 test images: every attack at every eps is this module's dearest work
    report, per_image = robust_accuracy(sweep, victim, data[2][:20], data[3][:20], CPU, 16, seed=seed)
    assert report["curve"][eps_key(0)] == report["clean"]
    assert report["robust"] == report["curve"][eps_key(8.0)]
    for decision in ("head", "knn"):
        curve = [report["curve"][eps_key(eps)][decision] for eps in sweep.eps_255]
        assert curve == sorted(curve, reverse=True), curve
        for name, points in report["attacks"].items():
            for key, point in points.items():
                assert report["curve"][key][decision] <= point[decision] <= report["clean"][decision]
        assert per_image[f"robust.{decision}"].float().mean().item() == pytest.approx(report["robust"][decision], abs=1e-6)
        assert not (per_image[f"robust.{decision}"] & ~per_image[f"clean.{decision}"]).any()
    assert set(report["attacks"]) == set(ATTACKS) and list(report["attacks"]["apgd_t"]) == [eps_key(8.0)]
    assert report["curve"][eps_key(32.0)]["knn"] < report["clean"]["knn"], "the attacks did nothing: a weak test"


def test_results_repeat_and_the_reference_model_gets_no_transfer_attack(data):
    victim = victim_of(tiny_model(0), data)   # no transfer source: this is the reference model itself
    one_eps = config(eps=(0.0, 8.0), names=("fgm", "pgd", "transfer"))   # the study's eps is enough here
    first = robust_accuracy(one_eps, victim, data[2], data[3], CPU, 16, seed=0)
    again = robust_accuracy(one_eps, victim, data[2], data[3], CPU, 16, seed=0)
    assert first[0] == again[0]
    assert set(first[0]["attacks"]) == {"fgm", "pgd"}


def test_a_headless_model_is_scored_by_its_3nn_alone(data):
    report, per_image = robust_accuracy(config(eps=(0.0, 8.0), names=("pgd", "soft_knn_pgd")),
                                        victim_of(tiny_model(0), data, has_head=False), data[2], data[3], CPU, 16, seed=0)
    assert set(report["robust"]) == {"knn"} and set(per_image) == {"clean.knn", "robust.knn"}


def test_a_cascade_attacks_only_what_every_earlier_attack_left_and_says_what_each_broke(data, monkeypatch):
    """AutoAttack's protocol: FGM, a deterministic attack, gives the same robust accuracy either way, while
    the later attacks see only the images still standing; clean minus what each broke is the curve."""
    victim = victim_of(tiny_model(0), data, transfer_source=tiny_model(10))
    seen: list[tuple[str, int]] = []
    for name in ("fgm", "pgd"):
        monkeypatch.setitem(RUNS, name, lambda settings, victim, x, *rest, run=RUNS[name], name=name: (
            seen.append((name, len(x))), (yield from run(settings, victim, x, *rest)))[-1])
    full, _ = robust_accuracy(config(names=("fgm",)), victim, data[2], data[3], CPU, 64, seed=0)
    cascade, per_image = robust_accuracy(config(names=("fgm",), cascade=True), victim, data[2], data[3], CPU, 64, seed=0)
    assert cascade["curve"] == full["curve"] and "attacks" not in cascade and "broken" not in full
    seen.clear()
    report, per_image = robust_accuracy(config(names=("fgm", "pgd"), cascade=True), victim, data[2], data[3], CPU, 64,
                                        seed=0)
    attacked = [size for name, size in seen]
    assert attacked[0] == max(attacked) and attacked[-1] < attacked[0], seen   # fewer and fewer images
    for decision in ("head", "knn"):
        for eps in (4.0, 8.0, 32.0):   # what each attack broke first so far, at this eps or a smaller one
            broken = sum(report["broken"][name][eps_key(eps)][decision] for name in ("fgm", "pgd"))
            assert report["curve"][eps_key(eps)][decision] == pytest.approx(report["clean"][decision] - broken, abs=1e-5)
        assert per_image[f"robust.{decision}"].float().mean().item() == pytest.approx(report["robust"][decision], abs=1e-6)
    assert report["curve"][eps_key(32.0)]["knn"] < report["clean"]["knn"], "the attacks did nothing: a weak test"


def test_measuring_in_bf16_is_refused(data):
    with pytest.raises(ValueError, match="float32"):
        robust_accuracy(config(), victim_of(tiny_model(0), data), data[2], data[3],
                        Compute(torch.device("cpu"), mixed_precision=True), 16, seed=0)


# ---------------------------------------------------------------------------------------------
# The config
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw():
    with open("params.yaml") as handle:
        return yaml.safe_load(handle)


def test_the_sweep_must_hold_the_study_eps_and_only_it_runs_the_study_only_attacks(raw):
    raw = {**raw, "attack": {**raw["attack"], "eps_255": [0, 2, 6.4, 32]}}
    with pytest.raises(ParamsError, match=r"does not contain the study's eps `perturb.fgm.eps_255` = 6.375"):
        RobustnessConfig.from_params(Params(raw))
    raw["attack"]["eps_255"] = [0, 2, 6.375, 32]
    planned = RobustnessConfig.from_params(Params(raw))
    assert planned.attacks_at(0) == []
    assert [a.name for a in planned.attacks_at(2)] == [name for name in ATTACKS if raw["attack"][name]["at"] == "sweep"]
    assert "apgd_t" in [a.name for a in planned.attacks_at(6.375)]


def test_an_attack_set_to_never_is_still_checked_but_never_runs(raw):
    attack = {**raw["attack"], "apgd_t": {**raw["attack"]["apgd_t"], "at": "never"}}
    assert "apgd_t" not in [a.name for a in RobustnessConfig.from_params(Params({**raw, "attack": attack})).attacks]
    attack["apgd_t"] = {**attack["apgd_t"], "targets": 12}
    with pytest.raises(ParamsError, match="attack.apgd_t.targets"):
        RobustnessConfig.from_params(Params({**raw, "attack": attack}))


@pytest.mark.parametrize("left, words", [((), "every attack is `at: never`"),
                                         (("transfer",), "only `transfer` runs, and it never attacks the reference")])
def test_a_plan_in_which_no_attack_aims_at_every_model_is_refused(raw, left, words):
    """Every attack `at: never` published clean accuracy as robust accuracy, with a summary that could only say its
    gates went unchecked; with transfer alone, the reference model's."""
    attack = {**raw["attack"], **{name: {**raw["attack"][name], "at": "study" if name in left else "never"}
                                  for name in ATTACKS}}
    with pytest.raises(ParamsError, match=re.escape(words)) as refused:
        RobustnessConfig.from_params(Params({**raw, "attack": attack}))
    assert "robust accuracy would be clean accuracy" in str(refused.value) and "\n" not in str(refused.value)
    attack["fgm"] = {**attack["fgm"], "at": "study"}   # one attack on each model's own decision is enough
    assert [a.name for a in RobustnessConfig.from_params(Params({**raw, "attack": attack})).attacks] == ["fgm", *left]


# ---------------------------------------------------------------------------------------------
# The sanity gates
# ---------------------------------------------------------------------------------------------


def entry(value: float) -> dict:
    return {"mean": value, "std": 0.01}


def metrics_with(attacks: dict[str, list[float]], eps=(2, 8, 32), knn_only=False) -> dict:
    """Aggregated robustness metrics of a head model, each attack's own accuracy per eps."""
    decisions = ("knn",) if knn_only else ("head", "knn")
    return {"robustness": {
        "study_eps_255": entry(8), "clean": {d: entry(0.9) for d in decisions}, "robust": {d: entry(0.0) for d in decisions},
        "curve": {eps_key(e): {d: entry(min(min(v) for v in attacks.values())) for d in decisions} for e in (0, *eps)},
        "attacks": {name: {eps_key(e): {d: entry(v) for d in decisions} for e, v in zip(eps, values)}
                    for name, values in attacks.items()}}}


SOUND = {"fgm": [0.6, 0.3, 0.05], "pgd": [0.5, 0.2, 0.0], "apgd_ce": [0.45, 0.1, 0.0], "transfer": [0.8, 0.6, 0.3],
         "soft_knn_pgd": [0.4, 0.1, 0.0], "soft_knn_apgd_ce": [0.4, 0.05, 0.0], "soft_knn_apgd_dlr": [0.3, 0.05, 0.0]}


def test_sound_robustness_numbers_pass_every_gate():
    assert gate_failures(metrics_with(SOUND), STUDY) == []


@pytest.mark.parametrize("change, words", [
    ({"pgd": [0.7, 0.2, 0.0]}, "head: pgd is weaker than fgm at eps 2/255 (70.0% vs 60.0%)"),
    ({"apgd_ce": [0.45, 0.25, 0.0]}, "head: apgd_ce is weaker than pgd at eps 8/255"),
    ({"transfer": [0.3, 0.15, 0.0]}, "head: pgd is weaker than transfer at eps 2, 8/255"),
    ({"pgd": [0.5, 0.55, 0.0]}, "head: pgd accuracy rises with eps at 8/255"),
    ({"soft_knn_apgd_ce": [0.4, 0.15, 0.0]}, "3-NN: soft_knn_apgd_ce is weaker than soft_knn_pgd at eps 8/255"),
    ({"soft_knn_apgd_dlr": [0.9, 0.05, 0.0]}, "3-NN: soft_knn_apgd_dlr is weaker than transfer at eps 2/255"),
    ({"apgd_ce": [0.45, 0.1, 0.05], "pgd": [0.5, 0.2, 0.05], "fgm": [0.6, 0.3, 0.06], "transfer": [0.8, 0.6, 0.3]},
     "head: 5.0% survive the strongest attack (pgd) at eps 32/255 (expected at most 2%)"),
])
def test_each_gate_names_what_failed(change, words):
    failures = gate_failures(metrics_with({**SOUND, **change}), STUDY)
    assert any(words in failure for failure in failures), failures


def without_attacks(metrics: dict) -> dict:
    metrics["robustness"]["attacks"] = {}
    return metrics


@pytest.mark.parametrize("metrics, words", [
    (metrics_with(SOUND, eps=(2, 8)), "no attack reached 32/255, the largest eps being 8/255"),
    (without_attacks(metrics_with(SOUND)), "no attack aimed at it ran, so its robust accuracy is its clean accuracy"),
], ids=["eps below the break gate's", "no attack"])
def test_a_break_gate_that_could_not_be_checked_is_said_not_passed(metrics, words):
    """`-S 'attack.eps_255=[6.375]'`, or every attack `at: never`, read "all gates pass" over numbers no attack at
    32/255 (or none at all) had tested."""
    assert gate_failures(metrics, STUDY) == []
    assert unchecked_gates(metrics, STUDY) == [f"head: {words}", f"3-NN: {words}"]
    (line,) = gate_lines({REFERENCE_METHOD: []}, {REFERENCE_METHOD: unchecked_gates(metrics, STUDY)})
    assert "could not be checked" in line and "pass" not in line
    assert unchecked_gates(metrics_with(SOUND), STUDY) == []


def cascade_metrics(robust_at_32: float) -> dict:
    """Aggregated robustness metrics of a cascade: no attack's own accuracy, what each broke first."""
    metrics = metrics_with(SOUND)["robustness"]
    del metrics["attacks"]
    metrics["curve"][eps_key(32)] = {d: entry(robust_at_32) for d in ("head", "knn")}
    metrics["broken"] = {"fgm": {eps_key(8): {d: entry(0.6) for d in ("head", "knn")}},
                         "apgd_ce": {eps_key(8): {d: entry(0.3) for d in ("head", "knn")}}}
    return {"robustness": metrics}


def test_a_cascade_is_gated_on_robust_accuracy_at_the_break_eps_and_shows_what_each_attack_broke():
    assert gate_failures(cascade_metrics(0.01), STUDY) == []
    assert gate_failures(cascade_metrics(0.05), STUDY) == ["head: 5.0% survive every attack at eps 32/255 (expected at most 2%)",
                                                    "3-NN: 5.0% survive every attack at eps 32/255 (expected at most 2%)"]
    row = robust_rows({REFERENCE_METHOD: cascade_metrics(0.0)}, STUDY)[0]
    assert row["fgm broke"] == "60.00 +- 1.00" and row["apgd_ce broke"] == "30.00 +- 1.00" and "pgd" not in row


def test_a_cascade_is_drawn_as_what_was_left_after_each_attack_in_turn():
    metrics = cascade_metrics(0.0)["robustness"]
    metrics["broken"]["fgm"][eps_key(2)] = {d: entry(0.2) for d in ("head", "knn")}   # 20 of the 60 points at 2/255
    lines = left_after_each_attack(metrics, "head")
    assert list(lines) == ["fgm", "apgd_ce"]   # registry order
    assert np.allclose(lines["fgm"][1], [90, 70, 30, 30]) and np.allclose(lines["apgd_ce"][1], [90, 70, 0, 0])
    panel = robustness_curves({REFERENCE_METHOD: {"robustness": metrics}}, STUDY).axes[1]
    assert len(panel.get_lines()) == 3 and np.allclose(panel.get_lines()[1].get_ydata(), [90, 70, 0, 0])


def test_one_step_of_fgm_may_lose_ground_at_a_large_eps():
    """A single step overshoots where eps is large: FGM is gated against PGD, not against itself."""
    assert gate_failures(metrics_with({**SOUND, "fgm": [0.6, 0.3, 0.4]}), STUDY) == []


def test_gates_apply_to_the_decisions_an_attack_aims_at():
    """On a head-less model, attacks on its soft class-mean score aim at no decision: the 3-NN is only
    scored on their images, so a weak FGM there is no failed gate."""
    assert gate_failures(metrics_with({**SOUND, "pgd": [0.7, 0.2, 0.0]}, knn_only=True), STUDY) == []


def test_the_robust_table_shows_clean_robust_and_each_attack_at_the_study_eps():
    rows = robust_rows({REFERENCE_METHOD: metrics_with(SOUND)}, STUDY)
    assert [row["decision"] for row in rows] == ["head", "3-NN"]
    assert [row["decision"] for row in robust_rows({REFERENCE_METHOD: metrics_with(SOUND)}, decision_labels(5))] == ["head", "5-NN"]
    assert rows[0]["clean"] == "90.00 +- 1.00" and rows[0]["robust"] == "0.00 +- 1.00"
    assert rows[0]["pgd"] == "20.00 +- 1.00" and rows[0]["apgd_ce"] == "10.00 +- 1.00"


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------


def test_robustness_curves_show_every_method_then_each_attack_per_method():
    figure = robustness_curves({REFERENCE_METHOD: metrics_with(SOUND), ANGULAR: metrics_with(SOUND, knn_only=True)},
                               decision_labels(5))
    overview = figure.axes[0]
    assert [matplotlib.colors.to_hex(line.get_color()) for line in overview.get_lines()] == [method_colour(REFERENCE_METHOD, [REFERENCE_METHOD, ANGULAR])]
    assert overview.get_legend_handles_labels()[1] == [REFERENCE_METHOD]
    baseline_head = figure.axes[1]
    lines = baseline_head.get_lines()
    assert len(lines) == len(SOUND) + 1 and matplotlib.colors.to_hex(lines[-1].get_color()) == "#000000"
    assert np.allclose(lines[0].get_ydata(), [90, 60, 30, 5])    # fgm, from clean accuracy at 0
    assert baseline_head.get_xscale() == "symlog"
    assert figure.axes[2].texts[0].get_text() == "no head"
    knn_overview = figure.axes[3]
    assert [tick.get_text() for tick in knn_overview.get_xticklabels()] == ["0", "2", "8", "32"]
    assert [line.get_label() for line in knn_overview.get_lines()] == [REFERENCE_METHOD, ANGULAR]
    assert knn_overview.get_title() == "robust accuracy, 5-NN" and figure.axes[5].get_title() == f"{ANGULAR}: 5-NN"


def inside_the_figure(figure, artist) -> bool:
    figure.canvas.draw()
    box, frame = artist.get_window_extent(), figure.bbox
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_one_methods_robustness_figure_keeps_its_title_and_legend_inside():
    """Two panels wide, the title and the legend ran past both edges."""
    figure = robustness_curves({ANGULAR: metrics_with(SOUND, knn_only=True)}, decision_labels(3))
    assert inside_the_figure(figure, figure._suptitle) and inside_the_figure(figure, figure.legends[0])


def test_one_eps_draws_the_robust_accuracy_as_a_point_and_many_eps_label_only_some_ticks():
    one = robustness_curves({REFERENCE_METHOD: metrics_with({"pgd": [0.3]}, eps=(8,))}, decision_labels(3))
    robust = one.axes[1].get_lines()[-1]
    assert robust.get_color() == "black" and robust.get_marker() == "o"   # a line of one point draws nothing
    many = tuple(range(1, 21))
    figure = robustness_curves({REFERENCE_METHOD: metrics_with({"pgd": [0.5] * 20}, eps=many)}, decision_labels(3))
    labels = [tick.get_text() for tick in figure.axes[2].get_xticklabels()]   # the bottom row: shared, labelled
    assert len(labels) == 21 and 0 < sum(map(bool, labels)) <= MAX_EPS_LABELS
    assert labels[0] == "0" and labels[-1] == "20"   # clean, and the largest eps
