import math
from collections import Counter

import pytest
import torch

from robust_cifar import training
from robust_cifar.compute import Compute
from robust_cifar.methods import METHODS
from robust_cifar.model import CifarResNet18
from robust_cifar.params import AngularConfig, TrainConfig
from robust_cifar.perturb import PerturbSettings
from robust_cifar.training import SplitTensors, TrainingSetup, train_model
from tests.archives import make_images

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "lr", "seconds"}
VALIDATION_KEYS = {"val_loss", "val_acc", "val_seconds"}
CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread")


def split(n_per_class: int, seed: int) -> SplitTensors:
    images, labels = make_images(n_per_class, CLASSES, seed=seed)
    return SplitTensors(torch.from_numpy(images), torch.from_numpy(labels))


TRAIN = split(10, seed=0)   # 100 images
VAL = split(2, seed=1)      # 20 images


def config(**overrides) -> TrainConfig:
    values = dict(epochs=6, batch_size=25, lr=0.005, momentum=0.9, weight_decay=0.0, lr_factor=0.5,
                  lr_patience=2, val_every=1)
    values.update(overrides)
    return TrainConfig(**values)


def run(method: str, seed: int = 0, width: int = 8, train_split: SplitTensors = TRAIN, **overrides):
    train_config = config(**overrides)
    if method == "angular":
        train_config = TrainConfig(**{**train_config.__dict__, "batch_size": 0})  # as Params.train gives it
    setup = TrainingSetup(method=METHODS[method], train=train_config, compute=Compute.create("cpu", fast=False),
                          seed=seed, num_classes=CLASSES, eval_batch_size=64,
                          perturb=PerturbSettings(p=0.5) if method == "adversarial" else None,
                          angular=AngularConfig(alpha=45.0, per_class=3) if method == "angular" else None)
    torch.manual_seed(seed)  # the initial weights, as stages/train.py does
    model = CifarResNet18(width=width, embedding_dim=16, num_classes=CLASSES)
    history = train_model(setup, model, train_split, VAL, progress=False)
    return history, model


@pytest.fixture(scope="module")
def baseline_run():
    return run("baseline", epochs=6, val_every=4)


def test_baseline_lowers_the_training_loss(baseline_run):
    history, _ = baseline_run
    losses = [row["train_loss"] for row in history]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.85 * losses[0], losses
    assert min(losses[-2:]) < min(losses[:2]), losses
    assert history[-1]["train_acc"] > 0.2  # chance is 0.1


def test_one_row_per_epoch_with_documented_columns(baseline_run):
    history, _ = baseline_run
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    # val_every=4 over 6 epochs: epoch 4, and the last epoch always
    validated = [row["epoch"] for row in history if "val_acc" in row]
    assert validated == [4, 6]
    for row in history:
        expected = EPOCH_KEYS | (VALIDATION_KEYS if row["epoch"] in (4, 6) else set())
        assert set(row) == expected, row
        assert 0.0 <= row["train_acc"] <= 1.0
        assert row["seconds"] > 0 and row["lr"] == pytest.approx(0.005)
        if "val_acc" in row:
            assert 0.0 <= row["val_acc"] <= 1.0
            assert math.isfinite(row["val_loss"]) and row["val_seconds"] > 0


def test_val_every_one_validates_every_epoch():
    history, _ = run("baseline", width=4, epochs=2, val_every=1, batch_size=50)
    assert [set(row) for row in history] == [EPOCH_KEYS | VALIDATION_KEYS] * 2


def test_validation_matches_the_trained_model_head(baseline_run):
    history, model = baseline_run
    model.eval()
    with torch.no_grad():
        logits = model(VAL.images.float() / 255)
    accuracy = (logits.argmax(1) == VAL.labels).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, VAL.labels).item()
    assert history[-1]["val_acc"] == pytest.approx(accuracy, abs=1e-6)
    assert history[-1]["val_loss"] == pytest.approx(loss, rel=1e-4)


def test_adversarial_rows_include_perturbed_validation_accuracy():
    history, _ = run("adversarial", width=4, epochs=3, val_every=2, batch_size=50)
    for row in history:
        validated = row["epoch"] in (2, 3)
        assert set(row) == EPOCH_KEYS | ((VALIDATION_KEYS | {"val_perturbed_acc"}) if validated else set())
        if validated:
            assert 0.0 <= row["val_perturbed_acc"] <= 1.0
    baseline, _ = run("baseline", width=4, epochs=3, val_every=2, batch_size=50)
    # same seed, same batches: only the on-the-fly perturbations make the losses differ
    assert [r["train_loss"] for r in history] != [r["train_loss"] for r in baseline]
    assert "val_perturbed_acc" not in baseline[-1]


def test_angular_training_uses_balanced_batches_and_has_finite_validation(monkeypatch):
    seen = []
    original = training.objective_loss

    def recording(setup, model, images, labels):
        seen.append(Counter(labels.tolist()))
        return original(setup, model, images, labels)

    monkeypatch.setattr(training, "objective_loss", recording)
    history, _ = run("angular", width=4, epochs=2, val_every=1)
    assert seen, "no training step ran"
    # 10 images per class, 3 per class per batch -> ceil(10 / 3) = 4 batches per epoch, 30 images each
    assert len(seen) == 2 * 4
    for counts in seen:
        assert counts == Counter({label: 3 for label in range(CLASSES)})
    for row in history:
        assert set(row) == EPOCH_KEYS | VALIDATION_KEYS
        assert math.isfinite(row["val_loss"]) and row["val_loss"] > 0
        assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
        assert 0.0 <= row["train_acc"] <= 1.0 and 0.0 <= row["val_acc"] <= 1.0


def test_cross_entropy_methods_use_shuffled_batches_of_batch_size(monkeypatch):
    sizes = []
    original = training.objective_loss

    def recording(setup, model, images, labels):
        sizes.append(len(labels))
        return original(setup, model, images, labels)

    monkeypatch.setattr(training, "objective_loss", recording)
    run("baseline", width=4, epochs=1, batch_size=30)
    assert sizes == [30, 30, 30, 10]


def test_same_seed_same_history_different_seed_different():
    def losses(seed):
        history, model = run("baseline", seed=seed, width=4, epochs=2, batch_size=50)
        return [(row["train_loss"], row["train_acc"], row["val_loss"]) for row in history], model

    first, first_model = losses(0)
    again, again_model = losses(0)
    other, _ = losses(1)
    assert first == again
    for a, b in zip(first_model.state_dict().values(), again_model.state_dict().values()):
        assert torch.equal(a, b)
    assert first != other


def constant_loss(monkeypatch, values):
    """Replace the objective by a constant per step (zero gradients, so the weights never move)."""
    original = training.objective_loss
    steps = iter(values)

    def constant(setup, model, images, labels):
        loss, outputs = original(setup, model, images, labels)
        return loss * 0 + next(steps), outputs

    monkeypatch.setattr(training, "objective_loss", constant)


def test_plateau_of_the_training_loss_lowers_lr(monkeypatch):
    import itertools
    constant_loss(monkeypatch, itertools.repeat(1.0))
    history, _ = run("baseline", width=4, epochs=8, batch_size=100, lr=0.1, lr_factor=0.5, lr_patience=2,
                     val_every=100)
    lrs = [row["lr"] for row in history]
    # best at epoch 1; epochs 2, 3, 4 do not improve -> more than `patience` bad epochs -> halved from epoch 5 on
    assert lrs == pytest.approx([0.1] * 4 + [0.05] * 3 + [0.025])
    assert all(row["train_loss"] == pytest.approx(1.0) for row in history)


def test_improving_training_loss_keeps_lr(monkeypatch):
    constant_loss(monkeypatch, (10.0 - step for step in range(100)))  # one step per epoch: decreasing loss
    history, _ = run("baseline", width=4, epochs=6, batch_size=100, lr=0.1, lr_factor=0.5, lr_patience=0,
                     val_every=100)
    assert [row["train_loss"] for row in history] == pytest.approx([10.0, 9.0, 8.0, 7.0, 6.0, 5.0])
    assert [row["lr"] for row in history] == pytest.approx([0.1] * 6)
