"""FGM, PGD, the soft k-NN score and the guide-sample attack (robust_cifar.evaluation.attacks), every registered
attack's candidates (robust_cifar.evaluation.robustness.RUNS), all aimed away from the true label."""
import copy

import pytest
import torch
import torch.nn.functional as F

from robust_cifar.evaluation.attack_registry import ATTACKS
from robust_cifar.evaluation.attacks import choose_guides, fgm_step, guide_sample_attack, soft_knn_score
from robust_cifar.evaluation.knn import knn_predict
from robust_cifar.evaluation.robustness import RUNS, Victim
from robust_cifar.perturbations.pgd import pgd
from tests.archives import make_images
from tests.toys import TinyEmbedder, fit, seeded

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 10
EPS = 0.08  # pixel units: where the toy model starts to break (its classes differ by ~0.2 in mean colour)
STEPS = 10
# Small settings for every registered attack: enough to move images, cheap enough for a unit test.
SETTINGS = {"fgm": {}, "pgd": {"steps": 5, "step_scale": 2.5, "restarts": 2}, "apgd_ce": {"iterations": 10},
            "apgd_dlr": {"iterations": 10}, "apgd_t": {"iterations": 5, "targets": 2},
            "soft_knn_pgd": {"temperatures": [0.05, 0.1], "steps": 5, "step_scale": 2.5},
            "soft_knn_apgd_ce": {"temperatures": [0.05], "iterations": 10},
            "soft_knn_apgd_dlr": {"temperatures": [0.05], "iterations": 10},
            "guide_samples": {"steps": 5, "step_scale": 2.5}, "transfer": {"steps": 5, "step_scale": 2.5}}


class UnitVectors(torch.nn.Module):
    """A 'model' whose embedding is its input, normalized: k-NN tests with embeddings chosen by hand."""

    def embed(self, x):
        return F.normalize(x.flatten(1).float(), dim=1)


def synthetic(n_per_class: int, seed: int):
    images, labels = make_images(n_per_class, seed=seed)
    return torch.from_numpy(images).float() / 255, torch.from_numpy(labels)


@pytest.fixture(scope="module")
def toy(one_thread):
    """A tiny net trained on separable images, with its clean training embeddings for the 3-NN."""
    x_train, y_train = synthetic(20, seed=0)
    x_test, y_test = synthetic(10, seed=1)
    torch.manual_seed(0)
    net = fit(TinyEmbedder(), x_train, y_train, steps=40, lr=0.02)
    torch.manual_seed(1)
    source = fit(TinyEmbedder(), x_train, y_train, steps=40, lr=0.02)
    with torch.no_grad():
        train_embeddings = net.embed(x_train)
        accuracy = knn_accuracy(train_embeddings, y_train, net.embed(x_test), y_test)
    assert accuracy > 0.9, f"toy model failed to learn ({accuracy:.2f}); the attack tests would be meaningless"
    return dict(net=net, source=source, train_embeddings=train_embeddings, train_labels=y_train, x=x_test, y=y_test)


def knn_accuracy(train_embeddings, train_labels, embeddings, labels):
    return (knn_predict(train_embeddings, train_labels, embeddings, 3) == labels).float().mean().item()


def victim(toy) -> Victim:
    return Victim(toy["net"], toy["net"], True, toy["train_embeddings"], toy["train_labels"], 3, NUM_CLASSES,
                  transfer_source=toy["source"])


def candidates(name, toy, x, y, eps, seed=0) -> list[torch.Tensor]:
    return list(RUNS[name](SETTINGS[name], victim(toy), x, y, eps, seeded(seed)))


def summed_loss(net, x, labels):
    with torch.no_grad():
        return F.cross_entropy(net(x), labels, reduction="none")


# ---------------------------------------------------------------------------------------------
# Every registered attack: the budget, determinism, gradients
# ---------------------------------------------------------------------------------------------


def test_the_registry_and_its_runs_name_the_same_attacks_and_the_tests_cover_each():
    """Adding an attack (docs/extending.md): an ATTACKS entry, its RUNS entry in the same order, and its
    cheapest settings in this file's SETTINGS."""
    assert list(RUNS) == list(ATTACKS), ("give each attack of robust_cifar/evaluation/attack_registry.py ATTACKS its "
                                         "run in robust_cifar/evaluation/robustness.py RUNS, in the same order")
    assert set(SETTINGS) == set(ATTACKS), (f"add {sorted(set(ATTACKS) - set(SETTINGS))} to SETTINGS in "
                                           f"tests/test_attacks.py (drop {sorted(set(SETTINGS) - set(ATTACKS))})")
    for name, spec in ATTACKS.items():
        assert set(SETTINGS[name]) == set(spec.settings), f"SETTINGS[{name!r}] must set {sorted(spec.settings)}"


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_stays_in_the_eps_ball_and_pixel_range_and_moves_the_images(toy, name):
    x, y = toy["x"], toy["y"]
    found = candidates(name, toy, x, y, EPS)
    assert found, f"{name} returned no candidate"
    for x_adv in found:
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
        assert (x_adv - x).abs().max().item() <= EPS + 1e-6
        assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    # the budget is used: most pixels of the first candidate sit on the boundary of the ball (or of [0, 1]), as
    # for every L-inf attack that follows a gradient's sign (a random-noise one would not: docs/extending.md)
    moved = (found[0] - x).abs() > EPS - 1e-6
    assert moved.float().mean().item() > 0.3, f"{name} leaves most pixels inside the eps ball"


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_repeats_from_its_seed_and_leaves_parameter_grads_alone(toy, name):
    net, x, y = toy["net"], toy["x"][:20], toy["y"][:20]
    marks = [torch.full_like(p, 7.0) for p in net.parameters()]
    for p, mark in zip(net.parameters(), marks):
        p.grad = mark.clone()
    try:
        with torch.no_grad():
            under_no_grad = candidates(name, toy, x, y, EPS, seed=3)
        assert all(torch.equal(p.grad, mark) for p, mark in zip(net.parameters(), marks))
    finally:
        for p in net.parameters():
            p.grad = None
    again = candidates(name, toy, x, y, EPS, seed=3)
    assert len(again) == len(under_no_grad) and all(torch.equal(a, b) for a, b in zip(again, under_no_grad))
    other_seed = candidates(name, toy, x, y, EPS, seed=4)
    # a random start: another seed, other images (the seed is used); an attack that draws nothing, the same
    assert all(torch.equal(a, b) for a, b in zip(other_seed, again)) != ATTACKS[name].seeded


def test_attacks_aim_away_from_the_labels_they_are_given(toy):
    """The same attack aimed away from other labels moves the images elsewhere: the labels are used."""
    net, x, y = toy["net"], toy["x"][:30], toy["y"][:30]
    wrong = (y + 1) % NUM_CLASSES
    for attack in (lambda labels: fgm_step(net, x, labels, EPS),
                   lambda labels: pgd(net, x, labels, EPS, 5, EPS / 2, seeded(0))):
        away_from_truth, away_from_wrong = attack(y), attack(wrong)
        assert summed_loss(net, away_from_truth, y).sum() > summed_loss(net, away_from_wrong, y).sum()


@pytest.mark.parametrize("attack", ["fgm", "pgd"])
def test_eps_zero_is_the_identity(toy, attack):
    x, y = toy["x"], toy["y"]
    x_adv = fgm_step(toy["net"], x, y, 0.0) if attack == "fgm" else pgd(toy["net"], x, y, 0.0, 3, 0.1, seeded())
    assert torch.equal(x_adv, x)


# ---------------------------------------------------------------------------------------------
# PGD
# ---------------------------------------------------------------------------------------------


def naive_pgd(net, x, labels, eps, steps, step_size, generator):
    """PGD one image at a time, with the same generator draw."""
    start = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    results = []
    for i in range(len(x)):
        image, label = x[i:i + 1], labels[i:i + 1]
        adv = (image + (2 * start[i:i + 1] - 1) * eps).clamp(image - eps, image + eps).clamp(0, 1)
        for _ in range(steps):
            leaf = adv.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(net(leaf), label), leaf)
            adv = (adv + step_size * grad.sign()).clamp(image - eps, image + eps).clamp(0, 1)
        results.append(adv)
    return torch.cat(results)


def test_pgd_matches_a_per_image_loop(toy):
    # float64, so a batched and a one-image gradient cannot differ in sign by rounding alone.
    net = copy.deepcopy(toy["net"]).double()
    x, y = toy["x"][:30].double(), toy["y"][:30]
    eps = 0.07
    batched = pgd(net, x, y, eps, 4, eps / 3, seeded(5))
    assert torch.allclose(batched, naive_pgd(net, x, y, eps, 4, eps / 3, seeded(5)), rtol=0, atol=1e-12)


def test_pgd_is_at_least_as_strong_as_fgm(toy):
    net, x, y = toy["net"], toy["x"], toy["y"]
    x_fgm, x_pgd = fgm_step(net, x, y, EPS), pgd(net, x, y, EPS, STEPS, EPS / 4, seeded(0))
    assert summed_loss(net, x_pgd, y).sum() >= summed_loss(net, x_fgm, y).sum()
    with torch.no_grad():
        fgm_accuracy = (net(x_fgm).argmax(1) == y).float().mean().item()
        pgd_accuracy = (net(x_pgd).argmax(1) == y).float().mean().item()
    assert pgd_accuracy <= fgm_accuracy < 1.0


def test_pgd_rejects_a_bad_budget(toy):
    x, y = toy["x"][:2], toy["y"][:2]
    for kwargs in (dict(eps=-0.1), dict(eps=2.0), dict(steps=-1), dict(step_size=-1.0)):
        arguments = dict(eps=EPS, steps=1, step_size=0.01) | kwargs
        with pytest.raises(ValueError):
            pgd(toy["net"], x, y, generator=seeded(), **arguments)


# ---------------------------------------------------------------------------------------------
# The soft k-NN score
# ---------------------------------------------------------------------------------------------


def clustered_unit_vectors(n_per_class: int, seed: int, spread: float = 1.0):
    """Overlapping classes of unit vectors in 8-D: a 3-NN is right about 80% of the time."""
    generator = seeded(seed)
    centres = torch.randn(NUM_CLASSES, 8, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)
    points = centres[labels] + spread * torch.randn(len(labels), 8, generator=generator)
    return F.normalize(points, dim=1), labels


def naive_soft_knn(fit, fit_labels, queries, temperature):
    """The formula, one query and one class at a time in float64: log sum_{j in c} exp(cos_j / T)."""
    return torch.tensor([[sum(torch.exp(fit[j].double() @ query.double() / temperature).item()
                              for j in (fit_labels == c).nonzero().squeeze(1).tolist())
                          for c in range(NUM_CLASSES)] for query in queries], dtype=torch.float64).log()


def test_soft_knn_score_is_the_per_class_logsumexp_over_every_training_embedding():
    fit, fit_labels = clustered_unit_vectors(30, seed=0)
    queries, _ = clustered_unit_vectors(5, seed=1)
    score = soft_knn_score(UnitVectors(), fit, fit_labels, NUM_CLASSES, temperature=0.5)
    assert torch.allclose(score(queries).double(), naive_soft_knn(fit, fit_labels, queries, 0.5), atol=1e-5)


def test_soft_knn_argmax_agrees_with_the_3nn_at_a_small_temperature():
    fit, fit_labels = clustered_unit_vectors(100, seed=0)
    queries, query_labels = clustered_unit_vectors(50, seed=1)
    score = soft_knn_score(UnitVectors(), fit, fit_labels, NUM_CLASSES, temperature=0.03)
    knn = knn_predict(fit, fit_labels, queries, 3)
    knn_accuracy_here = (knn == query_labels).float().mean().item()
    assert 0.7 < knn_accuracy_here < 0.9  # the 3-NN makes mistakes here, so agreeing with it is not trivial
    agreement = (score(queries).argmax(1) == knn).float().mean().item()
    # The surrogate follows the 3-NN, mistakes included, more closely than the truth does.
    assert agreement > 0.88 and agreement > knn_accuracy_here + 0.05


def test_soft_knn_gradients_stay_finite_and_reach_every_class_at_a_tiny_temperature():
    fit, fit_labels = clustered_unit_vectors(30, seed=0)
    queries = clustered_unit_vectors(3, seed=1)[0].requires_grad_(True)
    # T = 0.001: exp(cos / T) overflows float32; a per-class logsumexp does not
    logits = soft_knn_score(UnitVectors(), fit, fit_labels, NUM_CLASSES, temperature=0.001)(queries)
    assert torch.isfinite(logits).all()
    for c in range(NUM_CLASSES):
        (grad,) = torch.autograd.grad(logits[:, c].sum(), queries, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_soft_knn_refuses_a_class_without_training_embeddings():
    fit, fit_labels = clustered_unit_vectors(5, seed=0)
    with pytest.raises(ValueError, match="every one of 11 classes"):
        soft_knn_score(UnitVectors(), fit, fit_labels, 11, temperature=0.1)


def test_pgd_on_the_soft_knn_score_lowers_knn_accuracy(toy):
    net, fit, fit_labels, x, y = toy["net"], toy["train_embeddings"], toy["train_labels"], toy["x"], toy["y"]
    surrogate = soft_knn_score(net, fit, fit_labels, NUM_CLASSES, 0.05)
    with torch.no_grad():
        clean = knn_accuracy(fit, fit_labels, net.embed(x), y)
        attacked = knn_accuracy(fit, fit_labels, net.embed(pgd(surrogate, x, y, EPS, STEPS, EPS / 4, seeded())), y)
    assert attacked < clean - 0.3


# ---------------------------------------------------------------------------------------------
# The guide-sample attack
# ---------------------------------------------------------------------------------------------


def naive_guides(clean, fit, fit_labels, away_from, k):
    """For each image in turn: the other class with the smallest mean distance to its k nearest."""
    guides = []
    for embedding, own in zip(clean, away_from):
        best_distance, best_members = float("inf"), None
        for c in fit_labels.unique().tolist():
            if c == own.item():
                continue
            members = (fit_labels == c).nonzero().squeeze(1)
            distances = (fit[members] - embedding).norm(dim=1)
            nearest = distances.argsort()[:k]
            if distances[nearest].mean().item() < best_distance:
                best_distance, best_members = distances[nearest].mean().item(), members[nearest]
        guides.append(sorted(best_members.tolist()))
    return guides


def test_guides_are_the_k_nearest_of_the_nearest_class_other_than_the_true_one():
    fit, fit_labels = clustered_unit_vectors(20, seed=0)
    queries, query_labels = clustered_unit_vectors(4, seed=1)
    guides = choose_guides(queries, fit, fit_labels, query_labels, 3)
    assert guides.shape == (len(queries), 3)
    assert [sorted(row) for row in guides.tolist()] == naive_guides(queries, fit, fit_labels, query_labels, 3)
    assert (fit_labels[guides] != query_labels.unsqueeze(1)).all()


def test_guide_attack_lowers_knn_accuracy_and_pulls_towards_the_guides(toy):
    net, fit, fit_labels, x, y = toy["net"], toy["train_embeddings"], toy["train_labels"], toy["x"], toy["y"]
    x_adv = guide_sample_attack(net, x, y, fit, fit_labels, EPS, STEPS, EPS / 4, 3, seeded())
    with torch.no_grad():
        clean_embeddings, adv_embeddings = net.embed(x), net.embed(x_adv)
    assert knn_accuracy(fit, fit_labels, adv_embeddings, y) < knn_accuracy(fit, fit_labels, clean_embeddings, y) - 0.3
    guides = choose_guides(clean_embeddings, fit, fit_labels, y, 3)
    similarity = lambda e: torch.einsum("bd,bkd->b", e, fit[guides]) / 3
    assert (similarity(adv_embeddings) > similarity(clean_embeddings)).float().mean().item() > 0.95


def test_guide_attack_refuses_classes_smaller_than_k(toy):
    fit, fit_labels = toy["train_embeddings"], toy["train_labels"].clone()
    fit_labels[fit_labels == 3] = 4
    fit_labels[0] = 3  # class 3 now has one training embedding
    with pytest.raises(ValueError, match="fewer than k"):
        guide_sample_attack(toy["net"], toy["x"][:4], toy["y"][:4], fit, fit_labels, EPS, 1, 0.01, 3, seeded())
