import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from robust_cifar.cache import ENV
from robust_cifar.compute import Compute
from robust_cifar.errors import TrainingDiverged, UserError
from robust_cifar.model import CifarResNet18
from robust_cifar.perturbations.perturb import PerturbSettings
from robust_cifar.training.live_log import EpochLog
from robust_cifar.training.methods.registry import Method
from robust_cifar.training.methods.batches import BalancedBatches, ShuffledBatches
from robust_cifar.training.methods.drawn_perturbations import DrawnPerturbations
from robust_cifar.training.methods.objectives import AngularEmbedding, CrossEntropyHead
from robust_cifar.training.train import SplitTensors, TrainConfig, TrainingSetup, train_model
from tests.archives import make_images
from tests.methods import ANGULAR, HEAD, PERTURBED_ANGULAR, PERTURBED_HEAD

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "lr", "seconds"}
VALIDATION_KEYS = {"val_loss", "val_acc", "val_seconds"}
CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread")


def split(n_per_class: int, seed: int) -> SplitTensors:
    images, labels = make_images(n_per_class, CLASSES, seed=seed)
    return SplitTensors(torch.from_numpy(images), torch.from_numpy(labels))


TRAIN = split(10, seed=0)   # 100 images
VAL = split(2, seed=1)      # 20 images
SMALL = split(2, seed=2)    # 20 images: where only the steps matter (the scheduler, validation cadences)


def config(**overrides) -> TrainConfig:
    values = dict(epochs=6, lr=0.005, momentum=0.9, weight_decay=0.0, lr_factor=0.5, lr_patience=2,
                  lr_schedule_on="epoch_mean", val_every=1)
    values.update(overrides)
    return TrainConfig(**values)


def make_method(name: str, batch_size: int = 25, per_class: int = 3) -> Method:
    angular = AngularEmbedding(alpha=45.0, per_class=per_class, attack_temperature=0.05)
    perturbation = DrawnPerturbations(PerturbSettings(p=0.5))
    return {
        HEAD: Method(name, CrossEntropyHead(), ShuffledBatches(batch_size)),
        PERTURBED_HEAD: Method(name, CrossEntropyHead(), ShuffledBatches(batch_size), perturbation),
        ANGULAR: Method(name, angular, BalancedBatches(per_class)),
        PERTURBED_ANGULAR: Method(name, angular, BalancedBatches(per_class), perturbation),
    }[name]


def run(method: str, seed: int = 0, width: int = 8, train_split: SplitTensors = TRAIN, batch_size: int = 25,
        **overrides):
    setup = TrainingSetup(method=make_method(method, batch_size), train=config(**overrides),
                          compute=Compute.create("cpu", fast=False), seed=seed, num_classes=CLASSES, eval_batch_size=64)
    torch.manual_seed(seed)  # the initial weights, as stages/train.py does
    model = CifarResNet18(width=width, embedding_dim=16, num_classes=CLASSES)
    history = train_model(setup, model, train_split, VAL, progress=False)
    return history, model


@pytest.fixture(scope="module")
def baseline_run():
    return run(HEAD, epochs=6, val_every=4)


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
    history, _ = run(HEAD, width=4, epochs=2, val_every=1, batch_size=50)
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
    history, _ = run(PERTURBED_HEAD, width=4, epochs=3, val_every=2, perturbed_val_every=2, batch_size=10, train_split=SMALL)
    for row in history:
        validated = row["epoch"] in (2, 3)
        assert set(row) == EPOCH_KEYS | ((VALIDATION_KEYS | {"val_perturbed_acc"}) if validated else set())
        if validated:
            assert 0.0 <= row["val_perturbed_acc"] <= 1.0
    baseline, _ = run(HEAD, width=4, epochs=3, val_every=2, batch_size=10, train_split=SMALL)
    # same seed, same batches: only the on-the-fly perturbations make the losses differ
    assert [r["train_loss"] for r in history] != [r["train_loss"] for r in baseline]
    assert "val_perturbed_acc" not in baseline[-1]


def test_perturbed_validation_has_its_own_cadence_and_does_not_change_the_model():
    every_epoch, model = run(PERTURBED_HEAD, width=4, epochs=4, val_every=3, perturbed_val_every=1, batch_size=10, train_split=SMALL)
    sparse, sparse_model = run(PERTURBED_HEAD, width=4, epochs=4, val_every=3, perturbed_val_every=2, batch_size=10, train_split=SMALL)
    assert [row["epoch"] for row in sparse if "val_perturbed_acc" in row] == [2, 4]   # every 2nd, and the last
    assert [row["epoch"] for row in sparse if "val_acc" in row] == [3, 4]             # clean: its own cadence
    assert set(sparse[1]) == EPOCH_KEYS | {"val_perturbed_acc", "val_seconds"}        # perturbed only at epoch 2
    # the same perturbed accuracy where both ran, and the same training
    assert sparse[3]["val_perturbed_acc"] == every_epoch[3]["val_perturbed_acc"]
    assert [row["train_loss"] for row in sparse] == [row["train_loss"] for row in every_epoch]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), sparse_model.state_dict().values()))


def record_loss_calls(monkeypatch, objective, record):
    original = objective.loss

    def recording(self, model, images, labels):
        record(labels)
        return original(self, model, images, labels)

    monkeypatch.setattr(objective, "loss", recording)


def test_angular_training_uses_balanced_batches_and_has_finite_validation(monkeypatch):
    seen = []
    record_loss_calls(monkeypatch, AngularEmbedding, lambda labels: seen.append(Counter(labels.tolist())))
    history, _ = run(ANGULAR, width=4, epochs=2, val_every=1)
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
    record_loss_calls(monkeypatch, CrossEntropyHead, lambda labels: sizes.append(len(labels)))
    run(HEAD, width=4, epochs=1, batch_size=30)
    assert sizes == [30, 30, 30, 10]


def test_same_seed_same_history_different_seed_different():
    def losses(seed):
        history, model = run(HEAD, seed=seed, width=4, epochs=2, batch_size=50)
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
    original = CrossEntropyHead.loss
    steps = iter(values)

    def constant(self, model, images, labels):
        loss, outputs = original(self, model, images, labels)
        return loss * 0 + next(steps), outputs

    monkeypatch.setattr(CrossEntropyHead, "loss", constant)


def test_a_training_whose_loss_becomes_nan_stops_in_that_epoch_with_one_line(monkeypatch):
    constant_loss(monkeypatch, [1.0, float("nan")])   # one step per epoch; a third would exhaust the values
    with pytest.raises(TrainingDiverged) as error:
        run(HEAD, width=4, epochs=5, batch_size=20, train_split=SMALL, lr=0.1, val_every=100)
    message = str(error.value)
    assert "\n" not in message and "mean training loss in epoch 2 is nan" in message, message
    assert "no model was written" in message and "-S train.lr=0.01 dvc.yaml" in message, message


def test_an_interrupted_training_ends_its_progress_line_so_the_stages_one_line_starts_a_new_one(capsys):
    """A bar left open kept its line unended, and the stage's `interrupted (SIGINT): ...` was glued to it."""
    def interrupt(row):
        raise KeyboardInterrupt

    setup = TrainingSetup(method=make_method(HEAD, 20), train=config(epochs=3, val_every=100),
                          compute=Compute.create("cpu", fast=False), seed=0, num_classes=CLASSES, eval_batch_size=64)
    # held, as run_stage holds the exception while it prints its line: the frames (and an unclosed bar) stay alive
    with pytest.raises(KeyboardInterrupt) as interrupted:
        train_model(setup, CifarResNet18(width=4, embedding_dim=16, num_classes=CLASSES), SMALL, VAL, progress=True,
                    on_epoch=interrupt)
    shown = capsys.readouterr().err
    assert interrupted.traceback
    print(repr(shown[-300:]), file=__import__("sys").__stdout__)
    assert f"train@{HEAD}" in shown and shown.endswith("\n"), repr(shown[-200:])


def test_plateau_of_the_training_loss_lowers_lr(monkeypatch):
    import itertools
    constant_loss(monkeypatch, itertools.repeat(1.0))
    history, _ = run(HEAD, width=4, epochs=8, batch_size=20, train_split=SMALL, lr=0.1, lr_factor=0.5, lr_patience=2,
                     val_every=100)
    lrs = [row["lr"] for row in history]
    # best at epoch 1; epochs 2, 3, 4 do not improve -> more than `patience` bad epochs -> halved from epoch 5 on
    assert lrs == pytest.approx([0.1] * 4 + [0.05] * 3 + [0.025])
    assert all(row["train_loss"] == pytest.approx(1.0) for row in history)


def test_improving_training_loss_keeps_lr(monkeypatch):
    constant_loss(monkeypatch, (10.0 - step for step in range(100)))  # one step per epoch: decreasing loss
    history, _ = run(HEAD, width=4, epochs=6, batch_size=20, train_split=SMALL, lr=0.1, lr_factor=0.5, lr_patience=0,
                     val_every=100)
    assert [row["train_loss"] for row in history] == pytest.approx([10.0, 9.0, 8.0, 7.0, 6.0, 5.0])
    assert [row["lr"] for row in history] == pytest.approx([0.1] * 6)


def test_the_scheduler_can_watch_the_last_batch_loss_as_the_notebook_did(monkeypatch):
    # two steps per epoch: the epoch mean keeps falling while the last batch's loss stays flat
    losses = [loss for epoch in range(8) for loss in (10.0 - 2 * epoch, 1.0)]
    constant_loss(monkeypatch, iter(losses))
    history, _ = run(HEAD, width=4, epochs=8, batch_size=10, train_split=SMALL, lr=0.1, lr_factor=0.5, lr_patience=2,
                     lr_schedule_on="last_batch", val_every=100)
    assert [row["lr"] for row in history] == pytest.approx([0.1] * 4 + [0.05] * 3 + [0.025])
    monkeypatch.undo()
    constant_loss(monkeypatch, iter(losses))
    history, _ = run(HEAD, width=4, epochs=8, batch_size=10, train_split=SMALL, lr=0.1, lr_factor=0.5, lr_patience=2,
                     lr_schedule_on="epoch_mean", val_every=100)
    assert [row["lr"] for row in history] == pytest.approx([0.1] * 8)


def test_the_scheduler_can_watch_the_validation_loss_which_then_runs_every_epoch(monkeypatch):
    # the training loss keeps falling while the validation loss stays flat
    constant_loss(monkeypatch, (10.0 - step for step in range(100)))
    monkeypatch.setattr(CrossEntropyHead, "validation_loss", lambda self, embeddings, logits, labels, seed: 1.0)
    history, _ = run(HEAD, width=4, epochs=8, batch_size=20, train_split=SMALL, lr=0.1, lr_factor=0.5, lr_patience=2,
                     lr_schedule_on="validation", val_every=100)
    # the loss alone in every epoch, val_every notwithstanding; the accuracy at the last
    assert all(row["val_loss"] == 1.0 for row in history)
    assert ["val_acc" in row for row in history] == [False] * 7 + [True]
    assert [row["lr"] for row in history] == pytest.approx([0.1] * 4 + [0.05] * 3 + [0.025])
    history, _ = run(HEAD, width=4, epochs=8, batch_size=20, train_split=SMALL, lr=0.1, lr_factor=0.5, lr_patience=2,
                     lr_schedule_on="epoch_mean", val_every=100)
    assert [row["lr"] for row in history] == pytest.approx([0.1] * 8)
    assert ["val_loss" in row for row in history] == [False] * 7 + [True]


def test_angular_adversarial_trains_on_perturbed_balanced_batches_and_reports_perturbed_accuracy(monkeypatch):
    seen = []
    record_loss_calls(monkeypatch, AngularEmbedding, lambda labels: seen.append(Counter(labels.tolist())))
    history, _ = run(PERTURBED_ANGULAR, width=4, epochs=2, val_every=1)
    assert seen and all(counts == Counter({label: 3 for label in range(CLASSES)}) for counts in seen)
    for row in history:
        assert set(row) == EPOCH_KEYS | VALIDATION_KEYS | {"val_perturbed_acc"}
        assert 0.0 <= row["val_perturbed_acc"] <= 1.0
    clean, _ = run(ANGULAR, width=4, epochs=2, val_every=1)
    assert [r["train_loss"] for r in history] != [r["train_loss"] for r in clean]


def test_a_headless_method_attacks_its_own_embedding_never_the_untrained_head():
    """FGM during angular_adversarial training differentiates the soft nearest-class score: the head's
    weights cannot change what the attack produces."""
    method = make_method(PERTURBED_ANGULAR)
    images = TRAIN.images[:30].float() / 255
    labels = TRAIN.labels[:30]
    compute = Compute.create("cpu", fast=False)

    def attacked(model):
        generator = torch.Generator().manual_seed(3)
        return method.training_images(model, images, labels, CLASSES, generator, compute)

    torch.manual_seed(0)
    model = CifarResNet18(width=4, embedding_dim=16, num_classes=CLASSES)
    first = attacked(model)
    with torch.no_grad():
        model.head.weight.normal_()
        model.head.bias.normal_()
    assert torch.equal(first, attacked(model))
    assert not torch.equal(first, images)   # something was perturbed
    assert model.training                   # the attack ran in eval mode and switched back


def test_a_training_log_starts_clean_and_a_damaged_cache_is_one_line(tmp_path, monkeypatch):
    """A file a killed training left in its live folder was carried into the next one's log (an output DVC hashes);
    a file where the live folder, or a folder where a lock file, goes was a traceback."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run, log_folder = f"{HEAD}-0", Path(f"reports/training/{HEAD}-0")
    left = Path(".cache/live") / run
    left.mkdir(parents=True)
    (left / "junk.txt").write_text("from a killed run")
    log = EpochLog(log_folder)
    log({"epoch": 1, "train_loss": 1.0})
    log.close()
    assert not (log_folder / "junk.txt").exists() and (log_folder / "metrics.json").is_file()
    left.write_text("a file where the run's live folder goes")
    EpochLog(log_folder).close()
    assert (log_folder / "metrics.json").is_file()
    shutil.rmtree(".cache/live")
    Path(".cache/live").write_text("a file where the live folders go")
    with pytest.raises(UserError, match=r"^the cache's folder .cache/live is a file: move the file away"):
        EpochLog(log_folder)
    Path(".cache/live").unlink()
    lock = Path(f".cache/locks/train@{run}.lock")
    lock.unlink()
    lock.mkdir()
    with pytest.raises(UserError, match=rf"^cannot open the lock file {re.escape(str(lock))} \(Is a directory\): "
                                        rf"remove the folder \(`rm -r {re.escape(str(lock))}`\), then rerun$"):
        EpochLog(log_folder)


def test_one_training_of_a_run_at_a_time_and_a_dead_one_holds_nothing(tmp_path, monkeypatch):
    """A stage run by hand while DVC runs the same one: both wrote one live log folder, and DVC recorded the half the
    second process went on writing after the first had moved the folder into place."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run, log_folder = f"{HEAD}-0", f"reports/training/{HEAD}-0"
    holder = (f"import time; from robust_cifar.cache import hold; held = hold('train@{run}', 'busy'); "
              "print('held', flush=True); time.sleep(60)")
    # in another shell of the project, with a cache of its own: the lock is the project's
    other = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                  ENV: str(tmp_path / "elsewhere")})
    try:
        assert other.stdout.readline() == "held\n"
        with pytest.raises(UserError) as refused:
            EpochLog(log_folder)
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"another training of {run} is running in this project")
        assert message.endswith(f"(it holds .cache/locks/train@{run}.lock): let it finish or stop it, then rerun")
        EpochLog(f"reports/training/{HEAD}-1").close()   # another run is free
    finally:
        other.kill()
        other.wait()
    log = EpochLog(log_folder)   # killed, it holds nothing
    log({"epoch": 0, "train_loss": 1.0})
    with pytest.raises(UserError):
        EpochLog(log_folder)   # this process's own log holds it too, until it is closed
    log.close()
    assert (tmp_path / log_folder / "metrics.json").is_file()
    EpochLog(log_folder).close()
