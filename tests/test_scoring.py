import json

import numpy as np
import pytest
import torch

from robust_cifar.conditions import CONDITIONS, KINDS, SPLITS, conditions_for, decision_labels
from robust_cifar.errors import ParamsError
from robust_cifar.evaluation.evaluate import score_embeddings, small_class_warning
from robust_cifar.reporting.aggregate import aggregate
from robust_cifar.reporting.figures import accuracy_bars
from robust_cifar.reporting.summarize import NOT_APPLICABLE, compare_with_baseline, markdown_report
from robust_cifar.training.methods.registry import REFERENCE_METHOD
from tests.methods import ANGULAR, PERTURBED_HEAD

CPU = torch.device("cpu")


def random_arrays(n: int = 40, dim: int = 8, classes: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """What embed@<method> writes: per split labels, and embeddings + logits per condition."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in SPLITS:
        arrays[f"{split}.labels"] = rng.integers(0, classes, n).astype(np.int64)
        for condition in conditions_for(split):
            embeddings = rng.normal(size=(n, dim)).astype(np.float32)
            arrays[f"{split}.{condition}.embeddings"] = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
            arrays[f"{split}.{condition}.logits"] = rng.normal(size=(n, classes)).astype(np.float32)
    return arrays


def reference_knn(fit, fit_labels, query, k, leave_one_out):
    """Brute force: Euclidean distance, majority vote, a tie between classes goes to the smallest label."""
    distances = ((query[:, None, :].astype(np.float64) - fit[None, :, :]) ** 2).sum(-1)
    if leave_one_out:
        np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1, kind="stable")[:, :k]
    votes = np.stack([np.bincount(fit_labels[row], minlength=fit_labels.max() + 1) for row in neighbours])
    return votes.argmax(1)


def test_structure_follows_splits_and_conditions():
    metrics, predictions = score_embeddings(random_arrays(), k=3, device=CPU)
    assert list(metrics) == list(SPLITS)
    for split in SPLITS:
        assert tuple(metrics[split]) == conditions_for(split)
        for entry in metrics[split].values():
            assert set(entry) == {"head", "knn"}
            assert all(isinstance(value, float) and 0 <= value <= 1 for value in entry.values())
    assert tuple(metrics["test"]) == CONDITIONS + KINDS
    assert tuple(metrics["train"]) == CONDITIONS
    assert set(predictions) == {f"{split}.{condition}.{decision}" for split in SPLITS
                                for condition in conditions_for(split) for decision in ("head", "knn")}
    json.dumps(metrics)  # written as reports/aggregate/<method>.json


def test_head_accuracy_is_argmax_accuracy():
    arrays = random_arrays(seed=1)
    metrics, predictions = score_embeddings(arrays, k=3, device=CPU)
    for split in SPLITS:
        labels = arrays[f"{split}.labels"]
        for condition in conditions_for(split):
            argmax = arrays[f"{split}.{condition}.logits"].argmax(1)
            np.testing.assert_array_equal(predictions[f"{split}.{condition}.head"], argmax)
            assert metrics[split][condition]["head"] == pytest.approx(float((argmax == labels).mean()), abs=1e-6)


def test_knn_matches_brute_force_with_leave_one_out_on_train_only():
    arrays = random_arrays(seed=2)
    k = 3
    metrics, predictions = score_embeddings(arrays, k=k, device=CPU)
    fit, fit_labels = arrays["train.clean.embeddings"], arrays["train.labels"]
    for split in SPLITS:
        labels = arrays[f"{split}.labels"]
        for condition in conditions_for(split):
            expected = reference_knn(fit, fit_labels, arrays[f"{split}.{condition}.embeddings"], k,
                                     leave_one_out=(split == "train"))
            np.testing.assert_array_equal(predictions[f"{split}.{condition}.knn"], expected)
            assert metrics[split][condition]["knn"] == pytest.approx(float((expected == labels).mean()), abs=1e-6)


def alternating_line_arrays(n: int = 20) -> dict[str, np.ndarray]:
    """Points 0, 1, 2, ... on a line with alternating labels, identical in every split and condition.

    Each point's nearest *other* point has the other label: a 1-NN that may use the point itself
    is always right, one that leaves it out is always wrong.
    """
    embeddings = np.zeros((n, 2), dtype=np.float32)
    embeddings[:, 0] = np.arange(n)
    labels = (np.arange(n) % 2).astype(np.int64)
    logits = np.eye(2, dtype=np.float32)[labels]
    arrays = {}
    for split in SPLITS:
        arrays[f"{split}.labels"] = labels
        for condition in conditions_for(split):
            arrays[f"{split}.{condition}.embeddings"] = embeddings.copy()
            arrays[f"{split}.{condition}.logits"] = logits
    return arrays


def test_train_knn_is_leave_one_out():
    metrics, _ = score_embeddings(alternating_line_arrays(), k=1, device=CPU)
    # with itself as a neighbour every training point would score 100%; leave-one-out scores 0%
    assert metrics["train"]["clean"]["knn"] == 0.0
    # a perturbed training image never sees its clean twin (here: identical to it)
    assert metrics["train"]["perturbed"]["knn"] == 0.0
    assert metrics["train"]["transfer"]["knn"] == 0.0
    # other splits are not in the fit set: an identical training point is a legitimate neighbour
    assert metrics["val"]["clean"]["knn"] == 1.0
    assert metrics["test"]["clean"]["knn"] == 1.0
    assert metrics["train"]["clean"]["head"] == 1.0


def test_no_head_entry_without_a_head():
    arrays = random_arrays(seed=3)
    with_head, _ = score_embeddings(arrays, k=3, device=CPU)
    headless = {key: value for key, value in arrays.items() if not key.endswith(".logits")}
    metrics, predictions = score_embeddings(headless, k=3, device=CPU)
    for split in SPLITS:
        for condition in conditions_for(split):
            assert metrics[split][condition] == {"knn": with_head[split][condition]["knn"]}
    assert not any(key.endswith(".head") for key in predictions)
    assert all(key.endswith(".knn") for key in predictions)


def test_k_beyond_the_training_set_is_a_params_error_before_any_scoring():
    arrays = random_arrays(n=40)
    with pytest.raises(ParamsError, match="`knn.k` = 40 is invalid: must be below the 40 training images"):
        score_embeddings(arrays, k=40, device=CPU)
    score_embeddings(arrays, k=39, device=CPU)


def test_a_vote_larger_than_the_smallest_class_is_warned_with_the_largest_local_k():
    """knn.k = 39 of 40 training images scored every image as one class, unsaid (a hostile pass on the tiny project)."""
    balanced, uneven = np.repeat(np.arange(10), 4), np.array([0] * 2 + [1] * 5 + [2] * 9)
    assert small_class_warning(3, balanced) is None and small_class_warning(4, balanced) is None
    warned = small_class_warning(39, balanced)
    assert "knn.k = 39 is more than the 4 training images of the smallest class" in warned
    assert "near k = 40" in warned and "at most 4" in warned
    assert "the 2 training images" in small_class_warning(3, uneven) and small_class_warning(2, uneven) is None


def fake_metrics(head: bool, clean: float, perturbed: float) -> dict:
    def entry(value):
        return {"head": value, "knn": value - 0.1} if head else {"knn": value - 0.1}
    per_split = {"clean": entry(clean), "perturbed": entry(perturbed), "transfer": entry((clean + perturbed) / 2)}
    return {"train": per_split, "val": per_split,
            "test": {**per_split, **{kind: entry(perturbed) for kind in KINDS}}}


def table_rows(report: str, method: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in report.splitlines() if line.startswith(f"| {method} ")]


def aggregated(head: bool, clean: float, perturbed: float, spread: float = 0.0) -> dict:
    return aggregate({seed: fake_metrics(head, clean + spread * seed, perturbed + spread * seed) for seed in range(3)})


def test_markdown_report_has_a_row_per_method_and_na_for_the_angular_head():
    all_metrics = {REFERENCE_METHOD: aggregated(True, 0.7, 0.45), PERTURBED_HEAD: aggregated(True, 0.68, 0.52),
                   ANGULAR: aggregated(False, 0.8, 0.6, spread=0.01)}
    report = markdown_report(all_metrics, comparisons=[], labels=decision_labels(3))
    headline = report.split("## Test set\n", 1)[1].split("\n## ", 1)[0]
    for method in all_metrics:
        rows = table_rows(headline, method)
        assert len(rows) == 1, (method, headline)
    baseline_row, angular_row = table_rows(headline, REFERENCE_METHOD)[0], table_rows(headline, ANGULAR)[0]
    assert "70.00" in baseline_row and "45.00" in baseline_row and "25.00" in baseline_row  # clean, perturbed, drop
    assert NOT_APPLICABLE not in baseline_row
    assert angular_row.count(NOT_APPLICABLE) == 4  # head clean / perturbed / transfer / drop
    assert "71.00 +- 1.00" in angular_row and "51.00 +- 1.00" in angular_row  # the 3-NN: mean +- std over seeds
    # the per-decision tables list the angular model's 3-NN only
    for method, decisions in ((REFERENCE_METHOD, 2), (PERTURBED_HEAD, 2), (ANGULAR, 1)):
        assert len(table_rows(report, method)) == 1 + 2 * decisions
    assert NOT_APPLICABLE == "n/a"


def test_the_report_names_the_knn_by_the_k_it_ran_with():
    all_metrics = {REFERENCE_METHOD: aggregated(True, 0.7, 0.45), ANGULAR: aggregated(False, 0.8, 0.6)}
    report = markdown_report(all_metrics, comparisons=[], labels=decision_labels(5), comparable_with_write_up=False)
    assert "3-NN" not in report
    assert [row[1] for row in table_rows(report, ANGULAR)[1:]] == ["5-NN", "5-NN"]   # one perturbation, every split
    assert " 5-NN clean " in report and "Training accuracy of the 5-NN is leave-one-out" in report
    ticks = [tick.get_text() for tick in accuracy_bars(all_metrics, decision_labels(5)).axes[0].get_xticklabels()]
    assert ticks == [f"{REFERENCE_METHOD}\nhead", f"{REFERENCE_METHOD}\n5-NN", f"{ANGULAR}\n5-NN"]


def test_the_accuracy_legend_covers_no_bar_label():
    """Inside the axes, at the upper right, it covered the label of a bar near 100%."""
    all_metrics = {method: aggregated(True, 0.99, 0.98) for method in (REFERENCE_METHOD, PERTURBED_HEAD)}
    figure = accuracy_bars(all_metrics, decision_labels(3))
    figure.canvas.draw()
    legend = figure.axes[0].get_legend().get_window_extent()
    bar_labels = [text.get_window_extent() for text in figure.axes[0].texts]
    assert bar_labels and not any(legend.overlaps(label) for label in bar_labels)


def test_comparisons_pair_seeds_and_use_each_methods_own_decision():
    rng = np.random.default_rng(0)
    def run(head: bool, clean: float, perturbed: float, robust: float) -> dict:
        decisions = {"head": robust, "knn": robust - 0.05} if head else {"knn": robust}
        return {**fake_metrics(head, clean, perturbed),
                "robustness": {"study_eps_255": 6.375, "test_images": 500, "clean": {d: clean for d in decisions},
                               "robust": decisions}}

    per_seed = {REFERENCE_METHOD: {seed: run(True, 0.70, 0.45 + 0.01 * seed, 0.10) for seed in range(3)},
                PERTURBED_HEAD: {seed: run(True, 0.68, 0.52 + 0.01 * seed, 0.25) for seed in range(3)},
                ANGULAR: {seed: run(False, 0.80, 0.55 - 0.02 * seed, 0.05 + 0.01 * seed) for seed in range(3)}}
    correct = {method: {seed: {"clean": rng.random(500) < 0.7, "perturbed": rng.random(500) < 0.5}
                        for seed in range(3)} for method in per_seed}
    comparisons = compare_with_baseline(per_seed, correct, decision_labels(3))
    assert [c.method for c in comparisons] == [PERTURBED_HEAD, ANGULAR]
    adversarial, angular = comparisons
    # +7 points on every seed: no spread, so the interval has zero width and excludes 0
    assert adversarial.sentence.startswith(f"{PERTURBED_HEAD} (head) raises perturbed test accuracy over the baseline by 7.0 +- 0.0")
    assert angular.decision == "knn"   # 3-NN 0.45, 0.43, 0.41 against the baseline head 0.45, 0.46, 0.47
    assert angular.row[f"perturbed - {REFERENCE_METHOD} (seeds, 95%)"].startswith("-3.0 +-")
    assert adversarial.row[f"robust - {REFERENCE_METHOD} (seeds, 95%)"] == "+15.0 +- 0.0 points"
    assert "robust accuracy (worst case over attacks) +15.0 +- 0.0 points (distinguishable from zero)" in adversarial.sentence
    report = markdown_report({m: aggregate(s) for m, s in per_seed.items()}, comparisons, decision_labels(3))
    assert f"- {adversarial.sentence}" in report and f"- {angular.sentence}" in report
    # how many images robust accuracy was measured on (attack.test_images: the per-seed files alone held it)
    assert "## Robust accuracy at 6.375/255\n\nTest accuracy (%) on the 500 attacked test images" in report
