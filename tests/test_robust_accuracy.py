import matplotlib.colors
import numpy as np
import pytest
import torch

from robust_cifar.compute import Compute
from robust_cifar.colours import METHOD_COLOURS
from robust_cifar.figures import robustness_curves
from robust_cifar.methods.objectives import class_means, soft_nearest_class_score
from robust_cifar.model import CifarResNet18
from robust_cifar.robust_accuracy import AttackConfig, Decisions, eps_key, robust_accuracy
from robust_cifar.summary import gate_failures
from tests.archives import make_images

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Compute.create("cpu", fast=False)


def config(**changes) -> AttackConfig:
    values = dict(eps=(0.0, 4.0, 32.0), pgd_steps=3, pgd_step_scale=2.5, pgd_restarts=1, knn_temperatures=(0.05,),
                  test_images=0, study_eps=4 / 255)
    values.update(changes)
    return AttackConfig(**values)


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = CifarResNet18(width=4, embedding_dim=16, num_classes=10).eval()
    train_images, train_labels = make_images(6, 10, seed=0)
    test_images, test_labels = make_images(3, 10, seed=1)
    with torch.no_grad():
        fit = model.embed(torch.from_numpy(train_images).float() / 255)
    decisions = Decisions(model, fit, torch.from_numpy(train_labels), 3, has_head=True)
    return decisions, torch.from_numpy(test_images), torch.from_numpy(test_labels)


def test_eps_keys_have_no_dots():
    assert [eps_key(e) for e in (0, 6.4, 32)] == ["eps_0", "eps_6p4", "eps_32"]


def test_the_sweep_starts_at_clean_accuracy_and_the_worst_case_is_below_every_attack(setting):
    decisions, images, labels = setting
    result = robust_accuracy(config(), decisions, decisions.model, None, images, labels, CPU, 16, seed=0)
    clean = decisions.correct(images.float() / 255, labels, 16)
    for attack in ("fgm", "pgd"):
        assert result["sweep"][attack]["eps_0"] == {k: pytest.approx(v.float().mean().item()) for k, v in clean.items()}
    for decision, robust in result["robust"].items():
        assert all(robust <= value + 1e-9 for value in result["at_study_eps"][decision].values())
    assert set(result["at_study_eps"]["knn"]) == {"pgd_own_decision", "fgm_own_decision", "soft_knn_t0p05",
                                                  "guide_samples"}
    assert result["test_images"] == len(labels)


def test_a_transfer_source_adds_a_transfer_attack_and_results_repeat(setting):
    decisions, images, labels = setting
    torch.manual_seed(5)
    source = CifarResNet18(width=4, embedding_dim=16, num_classes=10).eval()
    first = robust_accuracy(config(), decisions, decisions.model, source, images, labels, CPU, 16, seed=0)
    again = robust_accuracy(config(), decisions, decisions.model, source, images, labels, CPU, 16, seed=0)
    assert first == again
    assert "transfer_from_baseline" in first["at_study_eps"]["knn"]
    assert "transfer_from_baseline" in first["at_study_eps"]["head"]


def test_a_headless_model_is_attacked_through_its_soft_nearest_class_score(setting):
    decisions, images, labels = setting
    headless = Decisions(decisions.model, decisions.fit, decisions.fit_labels, 3, has_head=False)
    score = soft_nearest_class_score(decisions.model, class_means(decisions.fit, decisions.fit_labels, 10), 0.05)
    result = robust_accuracy(config(eps=(0.0, 8.0)), headless, score, None, images, labels, CPU, 16, seed=0)
    assert set(result["robust"]) == {"knn"}
    assert all(set(entry) == {"knn"} for entry in result["sweep"]["pgd"].values())


def curve(values: list[float]) -> dict:
    return {eps_key(eps): {"head": {"mean": value, "std": 0.01}} for eps, value in zip((0, 4, 8, 32), values)}


def metrics_with(fgm: list[float], pgd: list[float], white_box: float = 0.2, transfer: float = 0.4) -> dict:
    return {"robustness": {"sweep": {"fgm": curve(fgm), "pgd": curve(pgd)},
                           "at_study_eps": {"head": {"pgd": {"mean": white_box, "std": 0},
                                                     "transfer_from_baseline": {"mean": transfer, "std": 0}}}}}


def test_sound_robustness_numbers_pass_every_gate():
    assert gate_failures(metrics_with([0.9, 0.5, 0.3, 0.1], [0.9, 0.3, 0.1, 0.0])) == []


@pytest.mark.parametrize("metrics, words", [
    (metrics_with([0.9, 0.5, 0.3, 0.1], [0.9, 0.6, 0.1, 0.0]), "PGD is weaker than FGM at eps 4/255"),
    (metrics_with([0.9, 0.5, 0.6, 0.1], [0.9, 0.3, 0.1, 0.0]), "FGM accuracy rises with eps at 8/255"),
    (metrics_with([0.9, 0.5, 0.4, 0.3], [0.9, 0.3, 0.2, 0.2]), "20.0% survive PGD at eps 32/255"),
    (metrics_with([0.9, 0.5, 0.3, 0.1], [0.9, 0.3, 0.1, 0.0], white_box=0.5, transfer=0.3),
     "the white-box attack is weaker than transfer"),
])
def test_each_gate_names_what_failed(metrics, words):
    failures = gate_failures(metrics)
    assert len(failures) == 1 and words in failures[0], failures


def test_robustness_curves_draw_pgd_and_fgm_per_method():
    figure = robustness_curves({"baseline": metrics_with([0.9, 0.5, 0.3, 0.1], [0.9, 0.3, 0.1, 0.0]),
                                "adversarial": metrics_with([0.9, 0.6, 0.4, 0.2], [0.9, 0.5, 0.2, 0.05])})
    head_axis = figure.axes[0]
    lines = head_axis.get_lines()
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]   # PGD solid, FGM dashed
    assert [matplotlib.colors.to_hex(line.get_color()) for line in lines] == (
        [METHOD_COLOURS["baseline"]] * 2 + [METHOD_COLOURS["adversarial"]] * 2)   # as in the training curves
    assert head_axis.get_legend_handles_labels()[1] == ["baseline", "adversarial"]
    assert np.allclose(lines[0].get_ydata(), [90, 30, 10, 0])
    assert head_axis.get_xscale() == "symlog"
    assert [tick.get_text() for tick in head_axis.get_xticklabels()] == ["0", "4", "8", "32"]


def test_guides_are_capped_by_the_smallest_class(setting):
    """A 3-NN whose k exceeds a class's training images (tiny data) still gets its guide attack."""
    decisions, images, labels = setting
    big_k = Decisions(decisions.model, decisions.fit, decisions.fit_labels, k=9, has_head=False)
    result = robust_accuracy(config(eps=(0.0,)), big_k, decisions.model, None, images, labels, CPU, 16, seed=0)
    assert "guide_samples" in result["at_study_eps"]["knn"]
