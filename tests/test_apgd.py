"""APGD (robust_cifar.evaluation.apgd) against the reference implementation of its authors (pyautoattack, the
packaged fra31/auto-attack, installed for the tests only), and against PGD on a trained toy model."""
import pytest
import torch
import torch.nn.functional as F

from robust_cifar.evaluation.apgd import apgd, apgd_run, apgd_start, cross_entropy, dlr, target_classes, targeted_dlr
from robust_cifar.perturbations.pgd import pgd
from tests.test_attacks import EPS, NUM_CLASSES, toy  # noqa: F401 (toy is a fixture)
from tests.toys import seeded

pytestmark = pytest.mark.usefixtures("one_thread")
reference = pytest.importorskip("pyautoattack.autopgd_base")


def reference_run(net, x, y, eps, iterations, loss, start, target=None):
    """The reference's single run from the same start: (x_best, robust, loss_best, x_best_adv)."""
    if loss == "dlr-targeted":
        attack = reference.APGDAttack_targeted(net, n_iter=iterations, eps=eps, device=x.device)
        attack.y_target = target
    else:
        attack = reference.APGDAttack(net, n_iter=iterations, eps=eps, loss=loss, device=x.device)
    attack.init_hyperparam(x)
    return attack.attack_single_run(x, y, x_init=start)


@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
def test_apgd_follows_the_reference_implementation_step_for_step(toy, loss):
    net, x, y = toy["net"], toy["x"], toy["y"]
    eps, iterations = EPS, 30   # 30 iterations: several checkpoints, some images halve their step, some not
    start = apgd_start(x, eps, seeded(0))
    target = target_classes(net, x, y, 1)[0] if loss == "dlr-targeted" else None
    ours = apgd_run(net, x, y, eps, iterations, {"ce": cross_entropy, "dlr": dlr,
                                                  "dlr-targeted": targeted_dlr(target)}.get(loss), start)
    best, robust, best_loss, best_adv = reference_run(net, x, y, eps, iterations, loss, start.clone(), target)
    assert torch.allclose(ours.best_loss_images, best, atol=1e-6)
    assert torch.allclose(ours.fooling_images, best_adv, atol=1e-6)
    assert torch.equal(ours.fooled, ~robust.bool())
    assert torch.allclose(ours.best_loss, best_loss, atol=1e-5)
    assert 0 < ours.fooled.float().mean() < 1, "every image fell or none did: the comparison would be weak"


def test_the_random_start_uses_the_whole_ball_and_repeats_from_the_seed(toy):
    x, eps = toy["x"], 0.03
    start = apgd_start(x, eps, seeded(3))
    assert (start - x).abs().max() <= eps + 1e-6 and start.min() >= 0 and start.max() <= 1
    # away from the edges of [0, 1], each image's largest move is exactly eps (the reference's scaling)
    inside = 0.25 + 0.5 * x
    moves = (apgd_start(inside, eps, seeded(3)) - inside).abs().flatten(1).amax(dim=1)
    assert torch.allclose(moves, torch.full_like(moves, eps), atol=1e-6)
    assert torch.equal(start, apgd_start(x, eps, seeded(3)))
    assert not torch.equal(start, apgd_start(x, eps, seeded(4)))


def naive_dlr(logits, labels):
    out = []
    for row, label in zip(logits, labels):
        ordered = row.sort(descending=True).values
        best_other = max(value for index, value in enumerate(row.tolist()) if index != label)
        out.append(-(row[label].item() - best_other) / (ordered[0] - ordered[2]).item())
    return torch.tensor(out)


def test_dlr_is_the_margin_to_the_best_other_class_over_the_top_three_spread():
    logits = torch.randn(50, NUM_CLASSES, generator=seeded(1))
    labels = torch.randint(0, NUM_CLASSES, (50,), generator=seeded(2))
    labels[:10] = logits[:10].argmax(1)    # some right, so both branches of "best other class" are used
    assert torch.allclose(dlr(logits, labels), naive_dlr(logits, labels), atol=1e-5)
    assert torch.allclose(dlr(3 * logits + 7, labels), dlr(logits, labels), atol=1e-5)   # scale and shift invariant


def test_target_classes_are_the_best_scoring_other_classes_in_order():
    logits = torch.randn(20, NUM_CLASSES, generator=seeded(5))
    labels = torch.randint(0, NUM_CLASSES, (20,), generator=seeded(6))
    targets = torch.stack(target_classes(lambda x: x, logits, labels, 9), dim=1)
    assert (targets != labels[:, None]).all()
    for row, label, chosen in zip(logits, labels, targets):
        others = [index for index in row.argsort(descending=True).tolist() if index != label]
        assert chosen.tolist() == others


def test_apgd_is_at_least_as_strong_as_pgd_on_a_trained_model(toy):
    net, x, y = toy["net"], toy["x"], toy["y"]
    with torch.no_grad():
        right = net(x).argmax(1) == y
    pgd_fooled = net(pgd(net, x, y, EPS, 10, 2.5 * EPS / 10, seeded(0))).argmax(1) != y
    result = apgd(net, x, y, EPS, 100, cross_entropy, seeded(0))
    apgd_fooled = result.fooled | (net(result.fooling_images).argmax(1) != y)
    pgd_accuracy = (right & ~pgd_fooled).float().mean().item()
    apgd_accuracy = (right & ~apgd_fooled).float().mean().item()
    assert apgd_accuracy <= pgd_accuracy < right.float().mean().item(), (apgd_accuracy, pgd_accuracy)
    # what APGD reports as fooled, its fooling images really are
    assert (net(result.fooling_images[result.fooled]).argmax(1) != y[result.fooled]).all()
    losses = F.cross_entropy(net(result.best_loss_images), y, reduction="none")
    assert torch.allclose(losses, result.best_loss, atol=1e-5)
