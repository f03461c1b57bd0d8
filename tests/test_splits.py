import numpy as np
import pytest

from robust_cifar.data.split import stratified_split, stratified_subset


def shuffled_labels(counts, seed=0):
    labels = np.concatenate([np.full(count, label) for label, count in enumerate(counts)]).astype(np.int64)
    return np.random.default_rng(seed).permutation(labels)


def test_exact_counts_per_class():
    labels = shuffled_labels([50] * 10)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert len(train) == 100 and len(val) == 400
    assert np.bincount(labels[train], minlength=10).tolist() == [10] * 10
    assert np.bincount(labels[val], minlength=10).tolist() == [40] * 10


def test_unequal_classes_round_per_class():
    labels = shuffled_labels([50, 30, 7, 12])
    train, val = stratified_split(labels, 0.2, seed=3)
    # round(0.2 * count) per class: 10, 6, round(1.4) = 1, round(2.4) = 2
    assert np.bincount(labels[train]).tolist() == [10, 6, 1, 2]
    assert np.bincount(labels[val]).tolist() == [40, 24, 6, 10]


def test_disjoint_covering_and_sorted():
    labels = shuffled_labels([50] * 10, seed=1)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.issubdtype(train.dtype, np.integer) and np.issubdtype(val.dtype, np.integer)


def test_same_seed_same_split_different_seed_different():
    labels = shuffled_labels([50] * 10)
    first = stratified_split(labels, 0.2, seed=0)
    again = stratified_split(labels, 0.2, seed=0)
    other = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    # still stratified under the other seed
    assert np.bincount(labels[other[0]]).tolist() == [10] * 10


def test_split_is_random_within_class():
    labels = np.repeat(np.arange(10), 50)  # class-sorted: a "first 10 of each class" split would be blocks
    train, _ = stratified_split(labels, 0.2, seed=0)
    first_per_class = np.concatenate([np.arange(c * 50, c * 50 + 10) for c in range(10)])
    assert not np.array_equal(train, first_per_class)


@pytest.mark.parametrize("fraction", [0.005, 0.995])
def test_fraction_leaving_a_part_empty_raises(fraction):
    labels = shuffled_labels([50, 50, 50])
    with pytest.raises(ValueError) as error:
        stratified_split(labels, fraction, seed=0)
    message = str(error.value)
    assert "split.train_fraction" in message
    assert str(fraction) in message
    assert "empty" in message
    assert "class 0" in message


def test_small_class_alone_triggers_the_error():
    labels = shuffled_labels([50, 50, 2])  # 0.2 * 2 rounds to 0 for class 2 only
    with pytest.raises(ValueError, match=r"class 2 \(2 images\)"):
        stratified_split(labels, 0.2, seed=0)


def test_validation_can_be_a_stratified_subset_of_what_training_leaves():
    labels = shuffled_labels([50, 50, 50])
    train, full_val = stratified_split(labels, 0.2, seed=0)
    train_again, val = stratified_split(labels, 0.2, seed=0, val_per_class=7)
    assert np.array_equal(train, train_again)              # the subset never changes the training images
    assert np.bincount(labels[val]).tolist() == [7, 7, 7]
    assert set(val) <= set(full_val)
    with pytest.raises(ValueError, match=r"`split.val_per_class` = 41 is more than the 40 images class 0"):
        stratified_split(labels, 0.2, seed=0, val_per_class=41)


def test_test_subset_is_stratified_seeded_and_all_for_zero():
    labels = shuffled_labels([30, 30, 30])
    subset = stratified_subset(labels, 5, seed=1)
    assert np.bincount(labels[subset]).tolist() == [5, 5, 5] and np.all(np.diff(subset) > 0)
    assert np.array_equal(subset, stratified_subset(labels, 5, seed=1))
    assert not np.array_equal(subset, stratified_subset(labels, 5, seed=2))
    assert np.array_equal(stratified_subset(labels, 0, seed=1), np.arange(90))
    with pytest.raises(ValueError, match="`split.test_per_class` = 31"):
        stratified_subset(labels, 31, seed=1)
