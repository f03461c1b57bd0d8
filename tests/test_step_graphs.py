"""What the CUDA-graph training step rests on, checked where it can be: the capturable angular loss,
the tensor learning rate the scheduler must keep, the fixed-shape perturbation of adversarial
batches, and the perturbation generator a graph must know. The capture and replay
themselves need a GPU: tests/test_step_graphs_cuda.py (run by the device script)."""

import pytest
import torch
import torch.nn.functional as F

from robust_cifar.compute import Compute
from robust_cifar.model import CifarResNet18
from robust_cifar.training.angular_loss import angular_loss
from robust_cifar.training.step_graphs import keep_learning_rate_tensor, register_generators
from robust_cifar.training.train import make_optimizer
from tests.methods import PERTURBED_ANGULAR, PERTURBED_HEAD
from tests.test_training import CLASSES, TRAIN, config, make_method


def balanced_batch(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat(per_class)[torch.randperm(CLASSES * per_class, generator=generator)]
    embeddings = F.normalize(torch.randn(len(labels), 16, generator=generator), dim=1)
    return embeddings, labels


@pytest.mark.parametrize("per_class", [2, 5])
def test_the_balanced_angular_loss_is_the_general_one_bit_for_bit(per_class):
    embeddings, labels = balanced_batch(per_class, seed=per_class)
    losses, grads = [], []
    for balanced in (None, per_class):
        x = embeddings.clone().requires_grad_()
        loss = angular_loss(x, labels, 45.0, per_class=balanced)
        loss.backward()
        losses.append(loss)
        grads.append(x.grad)
    assert torch.equal(losses[0], losses[1])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("change", ["relabel one row", "drop one row"])
def test_the_balanced_angular_loss_refuses_a_batch_that_is_not_balanced(change):
    embeddings, labels = balanced_batch(4, seed=0)
    if change == "relabel one row":
        labels = labels.clone()
        labels[0] = (labels[0] + 1) % CLASSES
    else:
        embeddings, labels = embeddings[1:], labels[1:]
    with pytest.raises((RuntimeError, ValueError), match="balanced|exactly 4 rows"):
        angular_loss(embeddings, labels, 45.0, per_class=4)


def test_a_plateau_cut_reaches_the_tensor_learning_rate():
    model = CifarResNet18(width=4, embedding_dim=8, num_classes=CLASSES)
    optimizer = make_optimizer(model, config(lr=0.01), graphed_on=torch.device("cpu"))
    lr = optimizer.defaults["lr"]
    assert isinstance(lr, torch.Tensor) and optimizer.param_groups[0]["lr"] is lr
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.05, patience=0)
    for loss in (1.0, 1.0):   # no improvement: one cut
        scheduler.step(loss)
        keep_learning_rate_tensor(optimizer)
    assert optimizer.param_groups[0]["lr"] is lr
    assert lr.item() == pytest.approx(0.0005)


def test_a_scheduler_that_assigns_a_float_is_written_back_into_the_tensor():
    """Older PyTorch schedulers replace a tensor lr by a float, which a captured step never reads."""
    model = CifarResNet18(width=4, embedding_dim=8, num_classes=CLASSES)
    optimizer = make_optimizer(model, config(lr=0.01), graphed_on=torch.device("cpu"))
    lr = optimizer.defaults["lr"]
    optimizer.param_groups[0]["lr"] = 0.002
    keep_learning_rate_tensor(optimizer)
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.002)


def test_the_fused_tensor_lr_update_trains_as_plain_sgd():
    """The graphed step's optimizer (fused, tensor lr) against the eager one over a few steps."""
    models = []
    for graphed_on in (None, torch.device("cpu")):
        torch.manual_seed(0)
        model = CifarResNet18(width=4, embedding_dim=8, num_classes=CLASSES)
        optimizer = make_optimizer(model, config(lr=0.05, weight_decay=1e-4), graphed_on=graphed_on)
        images = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(20) % CLASSES
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        models.append(model)
    for eager, fused in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [PERTURBED_HEAD, PERTURBED_ANGULAR])
def test_a_graphed_step_perturbs_its_batch_as_the_eager_one(method):
    """The fixed-shape path (FGM on every row, for a CUDA graph) gives the training images of the
    eager path (FGM on the gated rows) from the same draws."""
    perturbing = make_method(method)
    compute = Compute.create("cpu", fast=False)
    torch.manual_seed(0)
    model = CifarResNet18(width=4, embedding_dim=16, num_classes=CLASSES).train()
    images, labels = TRAIN.images[:30].float() / 255, TRAIN.labels[:30]

    def training_images(fixed_shape):
        return perturbing.training_images(model, images, labels, CLASSES, torch.Generator().manual_seed(4), compute,
                                          fixed_shape=fixed_shape)
    eager, fixed = training_images(False), training_images(True)
    assert not torch.equal(eager, images)
    torch.testing.assert_close(fixed, eager, rtol=0, atol=1e-6)
    assert model.training


class RecordingGraph:
    def __init__(self):
        self.registered = []

    def register_generator_state(self, generator):
        self.registered.append(generator)


def test_the_perturbation_generator_is_registered_with_a_graph_that_asks_for_it():
    generator = torch.Generator()
    graph = RecordingGraph()
    register_generators(graph, (generator,))
    assert graph.registered == [generator]
    register_generators(object(), (generator,))   # a PyTorch whose graphs register generators themselves


def test_graphs_are_off_on_a_cpu_whatever_the_param():
    assert Compute.create("cpu", fast=False, cuda_graphs=True).cuda_graphs is False
