"""Bit-identical reruns on a multi-threaded CPU.

The other tests run on one thread (the `one_thread` fixture), where PyTorch's racy parallel
kernels never race. These run on two threads and at sizes above PyTorch's parallel grain
(32768 elements), where they do: a gather by repeated index in the angular loss had a
backward (`index_put_` with accumulate=True) of racing atomic float adds, and two angular
trainings drifted apart from their first step. A race shows only sometimes, so the guard
below (RepeatedFloatWrites) looks for the writes that can race instead, at any size: no
training of any method and no attack writes a float at a repeated index.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from robust_cifar.compute import Compute
from robust_cifar.deterministic import last_occurrence, write_rows
from robust_cifar.evaluation.robustness import robust_accuracy
from robust_cifar.model import CifarResNet18
from robust_cifar.training.angular_loss import angular_loss
from robust_cifar.params import Params
from robust_cifar.training.methods.registry import REGISTRY, Method, build_method
from robust_cifar.training.methods.batches import BalancedBatches
from robust_cifar.training.methods.objectives import AngularEmbedding, class_means
from robust_cifar.training.train import SplitTensors, TrainConfig, TrainingSetup, train_model
from tests.archives import make_images
from tests.methods import ANGULAR
from tests.pipeline_project import PARAMS
from tests.test_robust_accuracy import config as robustness_config
from tests.test_robust_accuracy import tiny_model, victim_of

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


class RepeatedFloatWrites(TorchDispatchMode):
    """The indexed writes PyTorch's CPU kernels race on, wherever they occur: a float destination
    written at a repeated index by an accumulating write (index_put with accumulate=True, which is the
    backward of every gather by index; index_add; put_ with accumulate; scatter_add; scatter_reduce), or
    by a plain write of different values (index_put, index_copy). Above the parallel grain and on more
    than one thread, which occurrence lands last, or in which order the adds happen, is a race: this
    finds them at any size and thread count, without needing the race to show."""

    ACCUMULATING = {"index_add", "index_add_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_"}

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        destination = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if destination is not None and destination.is_floating_point():
            if name in ("index_put", "index_put_"):
                accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
                self.check_index_put(name, args[1], args[2], accumulate)
            elif name in ("index_copy", "index_copy_") and self.repeats(args[2]):
                self.found.append(f"{name} at repeated indices")
            elif name in self.ACCUMULATING and self.repeats(args[2] if "index" in name else args[2].movedim(args[1], -1)):
                self.found.append(f"{name} at repeated indices")
            elif name == "put_" and (args[3] if len(args) > 3 else kwargs.get("accumulate", False)) and self.repeats(args[1]):
                self.found.append("put_ accumulating at repeated indices")
        return func(*args, **kwargs)

    @staticmethod
    def repeats(index: torch.Tensor) -> bool:
        rows = index.reshape(-1, index.shape[-1]) if index.ndim > 1 else index.reshape(1, -1)
        return any(len(row.unique()) < len(row) for row in rows)

    def check_index_put(self, name, indices, values, accumulate):
        chosen = [index for index in indices if index is not None]
        if not chosen or any(index.dtype == torch.bool for index in chosen):
            return   # a mask selects each place once
        keys = torch.stack([index.reshape(-1) for index in torch.broadcast_tensors(*chosen)], dim=1)
        unique, inverse = keys.unique(dim=0, return_inverse=True)
        if len(unique) == len(keys):
            return
        if accumulate:
            self.found.append(f"{name} accumulating at repeated indices")
        elif values.ndim == 0 or values.shape[0] == 1:
            return   # one value written everywhere: whichever copy lands last, the same bytes
        elif len(chosen) > 1 or values.shape[0] != len(keys):
            self.found.append(f"{name} at repeated indices (not one row per index: values not compared)")
        else:   # each row against the first row written to its place
            first = torch.full((len(unique),), len(keys)).scatter_reduce(0, inverse, torch.arange(len(keys)), "amin")
            if not torch.equal(values, values[first[inverse]]):
                self.found.append(f"{name} of different rows at repeated indices")


def test_the_repeated_write_guard_finds_the_former_angular_loss_and_a_racing_row_write():
    embeddings, labels = study_batch(per_class=4, dim=8)
    with RepeatedFloatWrites() as guard:
        loss_and_gradient(pair_gather_angular_loss, embeddings, labels)
    assert "index_put accumulating at repeated indices" in guard.found   # the gather's backward

    indices = torch.tensor([0, 2, 0, 1])
    with RepeatedFloatWrites() as guard:
        torch.zeros(3, 2)[indices] = torch.arange(8.0).view(4, 2)        # rows 0 and 2 both go to 0
        torch.zeros(3, 2)[indices] = 1.0                                  # the same value everywhere
        write_rows(torch.zeros(3, 2), indices, torch.arange(8.0).view(4, 2))
        torch.zeros(3, 2).index_add_(0, indices, torch.ones(4, 2))
        torch.zeros(3, dtype=torch.long).index_add_(0, indices, torch.ones(4, dtype=torch.long))  # integer: exact
    assert guard.found == ["index_put_ of different rows at repeated indices",
                           "index_add_ at repeated indices"]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_no_training_writes_a_float_at_a_repeated_index(name):
    """Every method, with a class smaller than a balanced batch's share (its images repeat in a batch),
    a training epoch, a validation and the epoch's accuracy."""
    params = Params(copy.deepcopy(PARAMS))
    method = build_method(name, params)
    train_config = TrainConfig(epochs=1, lr=0.05, momentum=0.9, weight_decay=0.0, lr_factor=0.5, lr_patience=2,
                               lr_schedule_on="epoch_mean", val_every=1)
    setup = TrainingSetup(method=method, train=train_config, compute=Compute.create("cpu", fast=False),
                          seed=0, num_classes=10, eval_batch_size=64)
    small = split(3, seed=2)   # 3 images a class: every balanced batch repeats them
    torch.manual_seed(0)
    model = setup.compute.prepare(CifarResNet18(width=4, embedding_dim=16, num_classes=10))
    with RepeatedFloatWrites() as guard:
        train_model(setup, model, small, VAL, progress=False)
    assert guard.found == []


def test_no_attack_of_the_robustness_stage_writes_a_float_at_a_repeated_index():
    """Every registered attack at two eps, on a head and a 3-NN (whose votes are integer sums: exact)."""
    train_images, train_labels = make_images(6, 10, seed=0)
    test_images, test_labels = make_images(1, 10, seed=1)
    data = tuple(torch.from_numpy(array) for array in (train_images, train_labels, test_images, test_labels))
    victim = victim_of(tiny_model(0), data, transfer_source=tiny_model(10))
    with RepeatedFloatWrites() as guard:
        robust_accuracy(robustness_config(eps=(0.0, 8.0)), victim, data[2], data[3], Compute.create("cpu", fast=False),
                        16, seed=0)
    assert guard.found == []
