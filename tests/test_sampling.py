import math

import pytest
import torch

from robust_cifar.training.sampling import balanced_batches, shuffled_batches


def unequal_labels():
    counts = [13, 7, 20, 4]  # largest (20) not a multiple of per_class below
    labels = torch.cat([torch.full((c,), cls) for cls, c in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))], counts


def as_lists(batches):
    return [b.tolist() for b in batches]


def test_shuffled_batches_cover_every_index_exactly_once():
    batches = shuffled_batches(103, 10, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    flat = torch.cat(batches)
    assert sorted(flat.tolist()) == list(range(103))
    assert flat.tolist() != list(range(103))  # actually shuffled


def test_shuffled_batches_exact_multiple_has_no_short_batch():
    batches = shuffled_batches(40, 8, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [8] * 5


def test_shuffled_batches_seeded():
    first = as_lists(shuffled_batches(50, 7, torch.Generator().manual_seed(1)))
    assert first == as_lists(shuffled_batches(50, 7, torch.Generator().manual_seed(1)))
    assert first != as_lists(shuffled_batches(50, 7, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("per_class", [2, 3, 6])
def test_every_balanced_batch_has_per_class_of_every_class(per_class):
    labels, counts = unequal_labels()
    batches = balanced_batches(labels, per_class, torch.Generator().manual_seed(0))
    n_batches = max(math.ceil(c / per_class) for c in counts)
    assert len(batches) == n_batches
    for batch in batches:
        assert batch.dtype == torch.int64
        assert torch.bincount(labels[batch], minlength=len(counts)).tolist() == [per_class] * len(counts)
    assert sum(len(b) for b in batches) == n_batches * per_class * len(counts)


@pytest.mark.parametrize("per_class", [2, 3, 6])
def test_every_index_appears_and_repeats_are_the_cyclic_wrap(per_class):
    labels, counts = unequal_labels()
    batches = balanced_batches(labels, per_class, torch.Generator().manual_seed(0))
    seen = torch.bincount(torch.cat(batches), minlength=len(labels))
    assert (seen >= 1).all()
    slots = len(batches) * per_class
    for cls, count in enumerate(counts):
        # Cyclic reading: every item of a class appears floor or ceil of slots / count times.
        times = sorted(seen[labels == cls].tolist(), reverse=True)
        expected = [slots // count + (1 if j < slots % count else 0) for j in range(count)]
        assert times == expected


def test_batches_are_shuffled_within_not_class_major():
    labels, _ = unequal_labels()
    batches = balanced_batches(labels, 3, torch.Generator().manual_seed(0))
    in_batch_labels = [labels[b].tolist() for b in batches]
    assert any(order != sorted(order) for order in in_batch_labels)


def test_balanced_batches_seeded():
    labels, _ = unequal_labels()
    first = as_lists(balanced_batches(labels, 3, torch.Generator().manual_seed(5)))
    assert first == as_lists(balanced_batches(labels, 3, torch.Generator().manual_seed(5)))
    assert first != as_lists(balanced_batches(labels, 3, torch.Generator().manual_seed(6)))


def test_non_contiguous_label_values():
    labels = torch.tensor([7, 7, 3, 3, 3, 9, 9, 9, 9])
    batches = balanced_batches(labels, 2, torch.Generator().manual_seed(0))
    assert len(batches) == 2
    for batch in batches:
        assert sorted(labels[batch].tolist()) == [3, 3, 7, 7, 9, 9]


@pytest.mark.parametrize("per_class", [0, 1])
def test_per_class_below_two_raises(per_class):
    labels, _ = unequal_labels()
    with pytest.raises(ValueError, match="per_class must be >= 2"):
        balanced_batches(labels, per_class, torch.Generator().manual_seed(0))
