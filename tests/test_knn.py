import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from robust_cifar.evaluation.knn import knn_accuracy, knn_predict


def spread_data(n, dim=5, n_classes=4, seed=0, label_offset=0):
    # Continuous random coordinates: distance ties have probability zero.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g) * 3.0
    y = torch.randint(0, n_classes, (n,), generator=g) + label_offset
    return x, y


def brute_force_leave_one_out(x, y, k):
    """For each i: vote among the k closest j != i, ties between classes -> smallest label."""
    predictions = []
    for i in range(len(x)):
        others = [(torch.sum((x[i] - x[j]) ** 2).item(), j) for j in range(len(x)) if j != i]
        nearest = [j for _, j in sorted(others)[:k]]
        votes = {}
        for j in nearest:
            votes[y[j].item()] = votes.get(y[j].item(), 0) + 1
        best = max(votes.values())
        predictions.append(min(label for label, count in votes.items() if count == best))
    return torch.tensor(predictions)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("label_offset", [0, 10])
def test_matches_sklearn(k, label_offset):
    fit_x, fit_y = spread_data(60, seed=1, label_offset=label_offset)
    query_x, _ = spread_data(45, seed=2)
    expected = KNeighborsClassifier(n_neighbors=k).fit(fit_x.numpy(), fit_y.numpy()).predict(query_x.numpy())
    predicted = knn_predict(fit_x, fit_y, query_x, k)
    assert predicted.tolist() == expected.tolist()


def test_class_tie_goes_to_smallest_label_like_sklearn():
    fit_x = torch.tensor([[0.0], [1.0], [3.0], [-3.0]])
    fit_y = torch.tensor([5, 2, 5, 2])
    query_x = torch.tensor([[0.4], [0.6]])  # nearest two are one of each class
    expected = KNeighborsClassifier(n_neighbors=2).fit(fit_x.numpy(), fit_y.numpy()).predict(query_x.numpy())
    predicted = knn_predict(fit_x, fit_y, query_x, 2)
    assert predicted.tolist() == expected.tolist() == [2, 2]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_leave_one_out_matches_brute_force(k):
    x, y = spread_data(40, seed=3)
    predicted = knn_predict(x, y, x, k, exclude_same_index=True)
    assert predicted.tolist() == brute_force_leave_one_out(x, y, k).tolist()


def test_leave_one_out_is_not_self_lookup():
    x, y = spread_data(80, seed=4)
    with_self = knn_accuracy(x, y, x, y, 1)
    leave_one_out = knn_accuracy(x, y, x, y, 1, exclude_same_index=True)
    assert with_self == 1.0
    assert leave_one_out < with_self  # random labels: a neighbour rarely shares the label


def test_leave_one_out_excludes_by_index_not_by_distance():
    x, y = spread_data(20, seed=5)
    x[7] = x[0]  # exact duplicate of item 0 with a different label
    y[0], y[7] = 1, 2
    predicted = knn_predict(x, y, x, 1, exclude_same_index=True)
    assert predicted[0].item() == 2  # its twin (distance 0) is still a neighbour
    assert predicted[7].item() == 1


@pytest.mark.parametrize("exclude_same_index", [False, True])
def test_chunking_does_not_change_predictions(exclude_same_index):
    x, y = spread_data(50, seed=6)
    small = knn_predict(x, y, x, 3, exclude_same_index=exclude_same_index, chunk_size=7)
    large = knn_predict(x, y, x, 3, exclude_same_index=exclude_same_index, chunk_size=10_000)
    assert torch.equal(small, large)


def test_accuracy_is_mean_of_correct_predictions():
    fit_x, fit_y = spread_data(60, seed=7)
    query_x, query_y = spread_data(30, seed=8)
    predicted = knn_predict(fit_x, fit_y, query_x, 3)
    expected = (predicted == query_y).double().mean().item()
    assert knn_accuracy(fit_x, fit_y, query_x, query_y, 3) == pytest.approx(expected)


def test_exclude_same_index_requires_equal_sizes():
    fit_x, fit_y = spread_data(10)
    with pytest.raises(ValueError, match="Q must equal N"):
        knn_predict(fit_x, fit_y, fit_x[:5], 1, exclude_same_index=True)


@pytest.mark.parametrize("k", [0, 11])
def test_k_out_of_range_raises(k):
    fit_x, fit_y = spread_data(10)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(fit_x, fit_y, fit_x, k)
