"""reports/examples.png: which test images it shows, and how its difference panel is labelled."""
import numpy as np

from robust_cifar.reporting.examples import perturbation_examples
from stages.examples import pick_examples


def combination(gates: np.ndarray) -> np.ndarray:
    return gates.astype(int) @ np.array([1, 2, 4])


def every_combination(per_class: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image-folder test set: sorted by class, gates drawn with p = 0.3."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    return rng.random((len(labels), 3)) < 0.3, labels


def test_picked_examples_span_classes_and_every_combination():
    gates, labels = every_combination(per_class=100, classes=10, seed=0)
    shown = pick_examples(gates, labels, 8)
    assert len(shown) == 8 and len(set(shown.tolist())) == 8
    assert len(set(labels[shown].tolist())) == 8              # no two rows of one class
    assert set(combination(gates[shown]).tolist()) == set(range(8))   # none, each kind alone, pairs, all three
    hits = gates[shown].sum(axis=1)
    assert hits[0] == 0 and np.all(np.diff(hits) >= 0)       # the unperturbed reference first


def test_a_rare_combination_keeps_the_one_class_that_has_it():
    """Greedy would give class 0 to the most perturbed combination found first; matching does not."""
    labels = np.array([0, 0, 1, 1])
    gates = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=bool)   # (1,1,0) only in class 0
    shown = pick_examples(gates, labels, 2)
    assert set(combination(gates[shown]).tolist()) == {7, 3}
    assert set(labels[shown].tolist()) == {0, 1}


def test_spare_rows_go_to_classes_not_yet_shown_and_small_sets_are_shown_whole():
    labels = np.repeat(np.arange(6), 4)
    gates = np.zeros((len(labels), 3), dtype=bool)
    gates[5] = [True, False, False]          # class 1, the only perturbed image
    shown = pick_examples(gates, labels, 6)
    assert sorted(labels[shown].tolist()) == list(range(6))
    assert 5 in shown
    assert sorted(pick_examples(gates[:3], labels[:3], 8).tolist()) == [0, 1, 2]


def test_one_class_only_still_gives_distinct_images():
    gates, _ = every_combination(per_class=50, classes=1, seed=1)
    shown = pick_examples(gates, np.zeros(len(gates), dtype=int), 8)
    assert len(set(shown.tolist())) == 8


def test_the_difference_panel_says_what_grey_means():
    rng = np.random.default_rng(0)
    clean = rng.random((2, 3, 8, 8))
    figure = perturbation_examples(clean, np.clip(clean + 0.05, 0, 1), np.array([[0, 0, 0], [1, 0, 1]], dtype=bool),
                                   np.array([0, 1]), ["airplane", "car"])
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:3] == ["airplane", "perturbed: none", "difference x4\n(grey = unchanged)"]
    assert titles[4] == "perturbed: jitter + fgm"
    caption = " ".join(text.get_text() for text in figure.texts)
    assert "mid-grey where the image is unchanged" in caption.replace("\n", " ")
