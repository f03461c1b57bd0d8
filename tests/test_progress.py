"""Progress bars: the training bar ends exactly at its total, inference bars are off unless asked for."""
import pytest
import torch
from tqdm.auto import tqdm

from robust_cifar.compute import Compute
import robust_cifar.evaluation.inference as inference
from robust_cifar.model import CifarResNet18
import robust_cifar.training.train as training
from tests.methods import ANGULAR, HEAD
from tests.test_training import CLASSES, VAL, make_method, split

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordedBar(tqdm):
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shown = not self.disable   # close() sets disable
        RecordedBar.made.append(self)


@pytest.fixture
def bars(monkeypatch):
    RecordedBar.made = []
    monkeypatch.setattr(training, "tqdm", RecordedBar)
    monkeypatch.setattr(inference, "tqdm", RecordedBar)
    return RecordedBar.made


@pytest.mark.parametrize("method", [HEAD, ANGULAR])
def test_the_training_bar_ends_at_its_total(bars, method):
    """10 images per class, 3 per class per batch: 4 balanced batches = 120 images an epoch, not 100."""
    setup = training.TrainingSetup(method=make_method(method, batch_size=32, per_class=3),
                                   train=training.TrainConfig(epochs=2, lr=0.005, momentum=0.9, weight_decay=0.0,
                                                              lr_factor=0.5, lr_patience=2,
                                                              lr_schedule_on="epoch_mean", val_every=2),
                                   compute=Compute.create("cpu", fast=False), seed=0, num_classes=CLASSES,
                                   eval_batch_size=64)
    torch.manual_seed(0)
    model = CifarResNet18(width=4, embedding_dim=8, num_classes=CLASSES)
    training.train_model(setup, model, split(10, seed=0), VAL, progress=True)
    bar = bars[0]
    assert bar.total == 2 * (120 if method == ANGULAR else 100)
    assert bar.n == bar.total
    # each validation (epoch 2) shows its own bar, which disappears when it is done
    assert bars[0].shown
    validation = [other for other in bars[1:] if other.shown]
    assert validation and all(other.n == len(VAL.labels) for other in validation)


def test_inference_bar_is_off_by_default_and_counts_every_image_when_on(bars):
    model = CifarResNet18(width=4, embedding_dim=8, num_classes=CLASSES)
    compute = Compute.create("cpu", fast=False)
    images = split(3, seed=2).images   # 30 images, batches of 8
    inference.embed_and_classify(model, images, compute, 8)
    inference.embed_and_classify(model, images, compute, 8, progress="val")
    inference.embed_and_classify(model, images, compute, 8, progress=True)
    off, named, switched_on = bars
    assert not off.shown
    assert named.shown and named.desc.startswith("val") and named.n == named.total == 30
    assert switched_on.shown and switched_on.n == 30
