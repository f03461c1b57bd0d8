"""The training step as CUDA graphs, on a GPU: it trains as the eager step does, short last batches
and the on-the-fly perturbations of the adversarial methods included, and every learning-rate
change reaches the replayed update. A CPU has nothing to run
here; the device script (.device/gpu_study.sh) runs this file on the GPU."""
import pytest
import torch
import torch.nn.functional as F

from robust_cifar.compute import Compute
from robust_cifar.model import CifarResNet18
from robust_cifar.training.step_graphs import GraphedSteps
import robust_cifar.training.train as training
from robust_cifar.training.train import SplitTensors, TrainingSetup, make_optimizer, train_model
from tests.methods import ANGULAR, HEAD, PERTURBED_ANGULAR, PERTURBED_HEAD
from tests.test_training import CLASSES, TRAIN, VAL, config, make_method

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device script runs it)")


def on_gpu(split: SplitTensors) -> SplitTensors:
    return SplitTensors(split.images.cuda(), split.labels.cuda())


def train(method: str, graphs: bool):
    compute = Compute.create("cuda", fast=True, deterministic=True, cuda_graphs=graphs)
    # 100 images in batches of 32: three full batches and a short one of 4, each size its own graph
    setup = TrainingSetup(method=make_method(method, batch_size=32), train=config(epochs=8, val_every=4),
                          compute=compute, seed=0, num_classes=CLASSES, eval_batch_size=64)
    torch.manual_seed(0)
    model = compute.prepare(CifarResNet18(width=8, embedding_dim=16, num_classes=CLASSES))
    history = train_model(setup, model, on_gpu(TRAIN), on_gpu(VAL), progress=False)
    return history, model


@pytest.mark.parametrize("method", [HEAD, ANGULAR, PERTURBED_HEAD, PERTURBED_ANGULAR])
def test_graphed_training_follows_the_eager_step(method, monkeypatch):
    captured = []

    class Spy(GraphedSteps):
        def _capture(self, pixels, labels):
            captured.append(len(labels))
            return super()._capture(pixels, labels)
    monkeypatch.setattr(training, "GraphedSteps", Spy)
    eager_history, eager_model = train(method, graphs=False)
    graphed_history, graphed_model = train(method, graphs=True)
    # shuffled: batches of 32, 32, 32 and 4 each epoch; balanced: four batches of 3 x 10. The replays
    # draw the perturbations the eager steps would (graph-safe RNG), FGM on every row instead of the gated ones
    assert captured == {HEAD: [32, 4], ANGULAR: [30], PERTURBED_HEAD: [32, 4], PERTURBED_ANGULAR: [30]}[method]
    eager_losses = torch.tensor([row["train_loss"] for row in eager_history])
    graphed_losses = torch.tensor([row["train_loss"] for row in graphed_history])
    torch.testing.assert_close(graphed_losses, eager_losses, rtol=2e-2, atol=2e-2)
    assert graphed_losses[-1] < graphed_losses[0]
    for eager, graphed in zip(eager_model.parameters(), graphed_model.parameters()):
        torch.testing.assert_close(graphed, eager, rtol=5e-2, atol=5e-3)


def test_a_replayed_step_reads_the_current_learning_rate():
    torch.manual_seed(0)
    compute = Compute.create("cuda", fast=True, cuda_graphs=True)
    model = compute.prepare(CifarResNet18(width=8, embedding_dim=16, num_classes=CLASSES)).train()
    optimizer = make_optimizer(model, config(lr=0.01), graphed_on=compute.device)
    pixels = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, device="cuda")
    labels = torch.arange(32, device="cuda") % CLASSES

    def step(pixels, labels):
        with compute.autocast(cache_enabled=False):
            loss = F.cross_entropy(model(compute.images(pixels)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), loss.detach()
    steps = GraphedSteps(step)
    for _ in range(5):   # 3 eager warm-up steps, the capture, a replay
        steps(pixels, labels)
    assert list(steps.graphs) == [32]
    optimizer.defaults["lr"].fill_(0.0)
    before = [p.detach().clone() for p in model.parameters()]
    steps(pixels, labels)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    optimizer.defaults["lr"].fill_(0.01)
    steps(pixels, labels)
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
