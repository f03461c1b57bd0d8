"""Bit-identical reruns on a multi-threaded CPU.

The other tests run on one thread (the `one_thread` fixture), where PyTorch's racy parallel
kernels never race. These run on two threads and at sizes above PyTorch's parallel grain
(32768 elements), where they do: a gather by repeated index in the angular loss had a
backward (`index_put_` with accumulate=True) of racing atomic float adds, and two angular
trainings drifted apart from their first step.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from robust_cifar.compute import Compute
from robust_cifar.deterministic import last_occurrence, write_rows
from robust_cifar.model import CifarResNet18
from robust_cifar.training.angular_loss import angular_loss
from robust_cifar.training.methods import Method
from robust_cifar.training.methods.batches import BalancedBatches
from robust_cifar.training.methods.objectives import AngularEmbedding, class_means
from robust_cifar.training.train import SplitTensors, TrainConfig, TrainingSetup, train_model
from tests.archives import make_images
from tests.methods import ANGULAR

REPEATS = 20


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def study_batch(per_class=26, classes=10, dim=128, dtype=torch.float32, seed=0):
    """A class-balanced batch of the study's size: 26 x 10 unit embeddings of 128 dims."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=generator)]
    embeddings = F.normalize(torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), dim=1)
    return embeddings.to(dtype), labels


def loss_and_gradient(loss_fn, embeddings, labels, alpha=45.0):
    embeddings = embeddings.clone().requires_grad_(True)
    loss = loss_fn(embeddings, labels, alpha)
    loss.backward()
    return loss.detach(), embeddings.grad


def distinct(tensors) -> int:
    return len({tensor.numpy().tobytes() for tensor in tensors})


def pair_gather_angular_loss(embeddings, labels, alpha_degrees):
    """The former formulation: one row per positive pair, gathered by pair index."""
    t = math.tan(math.radians(alpha_degrees)) ** 2
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    same.fill_diagonal_(False)
    anchor, positive = torch.nonzero(same, as_tuple=True)
    similarity = embeddings @ embeddings.T
    exponents = 4 * t * (similarity[anchor] + similarity[positive]) \
        - 2 * (1 + t) * similarity[anchor, positive].unsqueeze(1)
    masked = exponents.masked_fill(labels[anchor].unsqueeze(1) == labels.unsqueeze(0), -math.inf)
    return torch.logsumexp(torch.cat([masked, masked.new_zeros(len(anchor), 1)], dim=1), dim=1).mean()


def test_angular_loss_gradient_is_bitwise_repeatable_at_the_study_batch():
    embeddings, labels = study_batch()
    runs = [loss_and_gradient(angular_loss, embeddings, labels) for _ in range(REPEATS)]
    assert distinct([loss for loss, _ in runs]) == 1
    assert distinct([gradient for _, gradient in runs]) == 1


@pytest.mark.parametrize("class_counts", [(26,) * 10, (7, 3, 3, 9, 1, 2, 40)])
def test_angular_loss_equals_the_pair_gather_formulation(class_counts):
    generator = torch.Generator().manual_seed(1)
    labels = torch.cat([torch.full((count,), label) for label, count in enumerate(class_counts)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    embeddings = F.normalize(torch.randn(len(labels), 32, generator=generator, dtype=torch.float64), dim=1)
    for alpha in (30.0, 45.0, 60.0):
        loss, gradient = loss_and_gradient(angular_loss, embeddings, labels, alpha)
        expected_loss, expected_gradient = loss_and_gradient(pair_gather_angular_loss, embeddings, labels, alpha)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-14)


def test_last_occurrence_of_each_index():
    indices = torch.tensor([5, 2, 5, 7, 2, 5])
    assert last_occurrence(indices).tolist() == [5, 4, 5, 3, 4, 5]


def test_write_rows_with_repeated_indices_is_repeatable_and_last_wins():
    generator = torch.Generator().manual_seed(2)
    indices = torch.randint(0, 512, (2048,), generator=generator)   # rows written ~4 times each
    values = torch.randn(2048, 128, generator=generator)
    expected = torch.zeros(600, 128)
    for position, index in enumerate(indices.tolist()):           # what one thread does
        expected[index] = values[position]

    def written():
        buffer = torch.zeros(600, 128)
        write_rows(buffer, indices, values)
        return buffer
    outputs = [written() for _ in range(REPEATS)]
    assert distinct(outputs) == 1
    assert torch.equal(outputs[0], expected)


def test_class_means_are_repeatable_and_equal_the_index_add_sums():
    generator = torch.Generator().manual_seed(3)
    embeddings = F.normalize(torch.randn(10_000, 128, generator=generator), dim=1)   # an epoch's buffer
    labels = torch.randint(0, 10, (10_000,), generator=generator)
    sums = torch.zeros(10, 128, dtype=torch.float64).index_add_(0, labels, embeddings.double())
    means = [class_means(embeddings, labels, 10) for _ in range(REPEATS)]
    assert distinct(means) == 1
    torch.testing.assert_close(means[0], F.normalize(sums, dim=1).float(), rtol=1e-6, atol=1e-7)


def split(n_per_class: int, seed: int) -> SplitTensors:
    images, labels = make_images(n_per_class, 10, seed=seed)
    return SplitTensors(torch.from_numpy(images), torch.from_numpy(labels))


TRAIN = split(30, seed=0)   # 300 images: per_class 26 (the study's) -> 2 batches of 260, 6500 positive pairs each
VAL = split(2, seed=1)


def train_angular(fast: bool):
    # Two epochs of two steps, each epoch's nearest-mean accuracy, one validation.
    train_config = TrainConfig(epochs=2, lr=0.05, momentum=0.9, weight_decay=0.0, lr_factor=0.5, lr_patience=2,
                               lr_schedule_on="epoch_mean", val_every=2)
    method = Method(ANGULAR, AngularEmbedding(alpha=45.0, per_class=26, attack_temperature=0.05), BalancedBatches(26))
    setup = TrainingSetup(method=method, train=train_config, compute=Compute.create("cpu", fast=fast),
                          seed=0, num_classes=10, eval_batch_size=64)
    torch.manual_seed(0)
    model = setup.compute.prepare(CifarResNet18(width=8, embedding_dim=32, num_classes=10))
    history = train_model(setup, model, TRAIN, VAL, progress=False)
    return [{key: value for key, value in row.items() if "seconds" not in key} for row in history], model.state_dict()


@pytest.mark.parametrize("fast", [False, True], ids=["fp32", "bf16-autocast"])
def test_two_angular_trainings_on_two_threads_are_bitwise_identical(fast):
    first_history, first_weights = train_angular(fast)
    second_history, second_weights = train_angular(fast)
    differing = [name for name in first_weights if not torch.equal(first_weights[name], second_weights[name])]
    assert differing == []
    assert first_history == second_history
