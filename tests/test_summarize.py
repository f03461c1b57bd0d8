"""The summary (robust_cifar/reporting/summarize.py): its comparisons against numbers worked by hand, its cells
and the write-up's column."""
import numpy as np
import pytest
from scipy import stats

from robust_cifar.conditions import decision_labels
from robust_cifar.reporting.aggregate import aggregate
from robust_cifar.reporting.provenance import provenance_lines
from robust_cifar.reporting.summarize import NOT_APPLICABLE, cell, compare_with_baseline, headline_metrics, headline_rows
from robust_cifar.training.methods.registry import REFERENCE_METHOD, REGISTRY, label, write_up

OTHER = next(name for name in REGISTRY if name != REFERENCE_METHOD)
STUDY = decision_labels(3)
IMAGES = 40


def seed_metrics(clean: float, perturbed: float, robust: float, head: bool = True) -> dict:
    decision = "head" if head else "knn"
    return {"test": {"clean": {decision: clean}, "perturbed": {decision: perturbed}},
            "robustness": {"robust": {decision: robust}}}


def per_image(accuracy: float, seed: int) -> dict:
    correct = np.zeros(IMAGES, dtype=bool)
    correct[np.random.default_rng(seed).permutation(IMAGES)[: round(accuracy * IMAGES)]] = True
    return {"perturbed": correct}


REFERENCE = {0: (0.50, 0.40, 0.00), 1: (0.55, 0.45, 0.00), 2: (0.60, 0.40, 0.05)}
METHOD = {0: (0.45, 0.50, 0.10), 1: (0.50, 0.50, 0.05), 2: (0.60, 0.45, 0.10)}


def comparison(head: bool = True, k: int = 3):
    per_seed = {REFERENCE_METHOD: {s: seed_metrics(*v) for s, v in REFERENCE.items()},
                OTHER: {s: seed_metrics(*v, head=head) for s, v in METHOD.items()}}
    correct = {REFERENCE_METHOD: {s: per_image(v[1], s) for s, v in REFERENCE.items()},
               OTHER: {s: per_image(v[1], 10 + s) for s, v in METHOD.items()}}
    [only] = compare_with_baseline(per_seed, correct, decision_labels(k))
    return only


def test_each_method_is_compared_with_the_reference_seed_by_seed():
    only = comparison()
    assert only.method == OTHER and only.decision == "head" and only.row["seeds"] == 3
    for column, index in (("perturbed", 1), ("robust", 2), ("clean", 0)):
        differences = [100 * (METHOD[s][index] - REFERENCE[s][index]) for s in REFERENCE]
        half = stats.t.ppf(0.975, 2) * np.std(differences, ddof=1) / np.sqrt(3)
        assert only.row[f"{column} - {REFERENCE_METHOD} (seeds, 95%)"] == f"{np.mean(differences):+.1f} +- {half:.1f} points"
    assert only.sentence.startswith(f"{OTHER} (head) ")


def test_a_headless_method_is_compared_by_its_knn_named_by_its_k():
    only = comparison(head=False)
    assert only.decision == "knn" and only.row["method"] == f"{OTHER} (3-NN)"
    assert comparison(head=False, k=5).row["method"] == f"{OTHER} (5-NN)"


def test_the_headline_is_each_methods_own_decision_in_percent_under_its_label():
    with_knn = {s: seed_metrics(*v) for s, v in REFERENCE.items()}
    for metrics in with_knn.values():   # a 3-NN beside the head, with other numbers: the head decides
        for section, condition in (("test", "clean"), ("test", "perturbed"), ("robustness", "robust")):
            metrics[section][condition]["knn"] = 0.99
    all_metrics = {REFERENCE_METHOD: aggregate(with_knn),
                   OTHER: aggregate({s: seed_metrics(*v, head=False) for s, v in METHOD.items()})}
    headline = headline_metrics(all_metrics)
    assert list(headline) == [label(REFERENCE_METHOD), label(OTHER)]
    for name, runs in ((REFERENCE_METHOD, REFERENCE), (OTHER, METHOD)):
        for index, key in enumerate(("clean", "perturbed", "robust")):
            values = [100 * run[index] for run in runs.values()]
            assert headline[label(name)][key] == pytest.approx(np.mean(values), abs=0.005)
            assert headline[label(name)][f"{key}_std"] == pytest.approx(np.std(values, ddof=1), abs=0.005)
        assert set(headline[label(name)]) == {"clean", "clean_std", "perturbed", "perturbed_std", "robust", "robust_std"}


@pytest.mark.parametrize("entry, text", [({"mean": 0.64781, "std": 0.0031}, "64.78 +- 0.31"),
                                         ({"mean": 0.5, "std": 0.0}, "50.00"), (None, NOT_APPLICABLE)])
def test_a_cell_is_percent_mean_and_std(entry, text):
    assert cell(entry) == text


def test_the_write_ups_column_only_where_it_reported_the_method():
    metrics = {name: {"seeds": 1, "test": {condition: {"head": {"mean": 0.5, "std": 0.0}}
                                           for condition in ("clean", "perturbed", "transfer")}} for name in REGISTRY}
    rows = {row["method"]: row for row in headline_rows(metrics, decision_labels(5))}
    for name in REGISTRY:
        reported = write_up(name)
        assert rows[name]["write-up clean / perturbed"] == ("" if reported is None else
                                                           f"{reported[1]} / {reported[2]} ({'head' if reported[0] == 'head' else '3-NN'})")
    assert all("write-up clean / perturbed" not in row for row in headline_rows(metrics, STUDY, with_write_up=False))
    assert rows[REFERENCE_METHOD]["5-NN clean"] == NOT_APPLICABLE   # this run's k; the write-up's column its 3-NN


@pytest.mark.parametrize("epochs, p, words", [(1, 0.0, "; 1 epoch; "), (100, 0.3, "; 100 epochs; ")])
def test_the_provenance_states_the_epochs_and_the_perturbation_probability(epochs, p, words):
    """perturb.p = 0 makes the perturbed condition the clean one: the summary says so instead of leaving a reader to
    compare two equal columns."""
    source = {"archive": "a.tar.gz", "md5": "0" * 32, "description": "d", "train_images": 50_000, "test_images": 10_000}
    settings = {"preset": "full", "model": {"width": 64, "embedding_dim": 128, "dropout": 0.0}, "epochs": epochs,
                "train_fraction": 0.2, "val_per_class": 0, "test_per_class": 0, "seeds": [0], "perturb_p": p}
    preset = provenance_lines(source, settings)[1]
    assert words in preset and f"applies each perturbation with probability {p:g} (`perturb.p`)" in preset
