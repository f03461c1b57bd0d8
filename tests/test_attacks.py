"""PGD, the soft k-NN score, the guide-sample attack and worst-case robustness (robust_cifar.attacks)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robust_cifar import attacks
from robust_cifar.attacks import (
    choose_guides,
    fgm,
    guide_sample_attack,
    nearest_indices,
    pgd,
    soft_knn_score,
    worst_case,
)
from robust_cifar.knn import knn_predict
from tests.archives import make_images
from tests.toys import fit

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 10
EPS = 0.08  # pixel units: where the toy model starts to break (its classes differ by ~0.2 in mean colour)
STEPS = 10


class TinyEmbedder(nn.Module):
    """The CifarResNet18 interface in miniature: `embed` gives unit-length embeddings, `forward` head logits."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, dim))
        self.head = nn.Linear(dim, NUM_CLASSES)

    def embed(self, x):
        return F.normalize(self.trunk(x).float(), dim=1)

    def forward(self, x):
        return self.head(self.trunk(x))


class UnitVectors(nn.Module):
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
    with torch.no_grad():
        train_embeddings = net.embed(x_train)
        accuracy = knn_accuracy(train_embeddings, y_train, net.embed(x_test), y_test)
    assert accuracy > 0.9, f"toy model failed to learn ({accuracy:.2f}); the attack tests would be meaningless"
    return dict(net=net, train_embeddings=train_embeddings, train_labels=y_train, x=x_test, y=y_test)


def knn_accuracy(train_embeddings, train_labels, embeddings, labels):
    return (knn_predict(train_embeddings, train_labels, embeddings, 3) == labels).float().mean().item()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_attack(name, toy, x, eps, seed=0):
    """Each attack at its usual settings against the toy model (the soft k-NN one through PGD)."""
    net, fit, fit_labels = toy["net"], toy["train_embeddings"], toy["train_labels"]
    if name == "fgm":
        return fgm(net, x, eps)
    if name == "pgd":
        return pgd(net, x, eps, STEPS, eps / 4, 2, seeded(seed))
    if name == "pgd_soft_knn":
        return pgd(soft_knn_score(net, fit, fit_labels, NUM_CLASSES, 0.05), x, eps, STEPS, eps / 4, 1, seeded(seed))
    if name == "guide":
        return guide_sample_attack(net, x, fit, fit_labels, eps, STEPS, eps / 4, 3, seeded(seed))
    raise ValueError(name)


ATTACKS = ["fgm", "pgd", "pgd_soft_knn", "guide"]
RANDOM_ATTACKS = ["pgd", "pgd_soft_knn", "guide"]


def summed_loss(net, x, labels):
    with torch.no_grad():
        return F.cross_entropy(net(x), labels, reduction="none")


# ---------------------------------------------------------------------------------------------
# Every attack: the budget, eps 0, determinism, gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_stay_in_the_eps_ball_and_pixel_range(toy, name):
    x = toy["x"]
    x_adv = run_attack(name, toy, x, EPS)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    # The budget is used: most pixels sit on the boundary of the ball (or of [0, 1]).
    moved = (x_adv - x).abs() > EPS - 1e-6
    assert moved.float().mean().item() > 0.5


@pytest.mark.parametrize("name", ATTACKS)
def test_eps_zero_is_the_identity(toy, name):
    x = toy["x"]
    assert torch.equal(run_attack(name, toy, x, 0.0), x)


@pytest.mark.parametrize("name", RANDOM_ATTACKS)
def test_attacks_are_reproducible_from_the_seed(toy, name):
    x = toy["x"][:40]
    first = run_attack(name, toy, x, EPS, seed=3)
    assert torch.equal(first, run_attack(name, toy, x, EPS, seed=3))
    assert not torch.equal(first, run_attack(name, toy, x, EPS, seed=4))  # the random start matters


@pytest.mark.parametrize("name", RANDOM_ATTACKS)
def test_attacks_leave_parameter_grads_alone_and_work_under_no_grad(toy, name):
    net, x = toy["net"], toy["x"][:20]
    marks = [torch.full_like(p, 7.0) for p in net.parameters()]
    for p, mark in zip(net.parameters(), marks):
        p.grad = mark.clone()
    try:
        with torch.no_grad():
            under_no_grad = run_attack(name, toy, x, EPS)
        assert all(torch.equal(p.grad, mark) for p, mark in zip(net.parameters(), marks))
    finally:
        for p in net.parameters():
            p.grad = None
    assert torch.equal(under_no_grad, run_attack(name, toy, x, EPS))
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name", ["pgd", "pgd_soft_knn"])
def test_attacks_under_bf16_autocast(toy, name):
    net, x = toy["net"], toy["x"][:50]
    with torch.no_grad():
        labels = net(x).argmax(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = run_attack(name, toy, x, EPS)
    assert x_adv.dtype == torch.float32 and torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert summed_loss(net, x_adv, labels).sum() > summed_loss(net, x, labels).sum()


# ---------------------------------------------------------------------------------------------
# PGD
# ---------------------------------------------------------------------------------------------


def naive_pgd(net, x, eps, steps, step_size, restarts, generator, labels=None):
    """PGD one image at a time, with the same generator draws and the same restart rule."""
    starts = [torch.rand(x.shape, generator=generator, dtype=x.dtype) for _ in range(restarts)]
    results = []
    for i in range(len(x)):
        image = x[i:i + 1]
        with torch.no_grad():
            label = net(image).argmax(1) if labels is None else labels[i:i + 1]
        best = best_loss = best_fooled = None
        for start in starts:
            adv = (image + (2 * start[i:i + 1] - 1) * eps).clamp(image - eps, image + eps).clamp(0, 1)
            for _ in range(steps):
                leaf = adv.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(net(leaf), label), leaf)
                adv = (adv + step_size * grad.sign()).clamp(image - eps, image + eps).clamp(0, 1)
            with torch.no_grad():
                logits = net(adv)
            loss, fooled = F.cross_entropy(logits, label).item(), logits.argmax(1).item() != label.item()
            if best is None or (fooled and not best_fooled) or (fooled == best_fooled and loss > best_loss):
                best, best_loss, best_fooled = adv, loss, fooled
        results.append(best)
    return torch.cat(results)


@pytest.mark.parametrize("with_labels", [False, True])
def test_pgd_matches_a_per_image_loop(toy, with_labels):
    # float64, so a batched and a one-image gradient cannot differ in sign by rounding alone.
    net = copy.deepcopy(toy["net"]).double()
    x, y = toy["x"][:30].double(), toy["y"][:30]
    # Given labels: every other one wrong, so they differ from the model's own predictions.
    labels = (y + torch.arange(len(y)) % 2) % NUM_CLASSES if with_labels else None
    eps = 0.07  # some images fall and some hold, so restarts disagree
    batched = pgd(net, x, eps, 4, eps / 3, 4, seeded(5), labels=labels)
    looped = naive_pgd(net, x, eps, 4, eps / 3, 4, seeded(5), labels=labels)
    assert torch.allclose(batched, looped, rtol=0, atol=1e-12)


def test_a_restart_that_changes_the_decision_beats_a_higher_loss_that_does_not():
    loss = torch.tensor([0.9, 2.0, 0.5, 3.0, 1.0, 1.0])
    fooled = torch.tensor([True, False, True, True, False, True])
    best_loss = torch.tensor([1.5, 1.0, 0.4, 3.5, 1.0, 1.0])
    best_fooled = torch.tensor([False, True, True, True, False, True])
    better = attacks.better_restart(loss, fooled, best_loss, best_fooled)
    assert better.tolist() == [True, False, True, False, False, False]  # ties keep the earlier restart


def test_pgd_is_at_least_as_strong_as_fgm(toy):
    net, x, y = toy["net"], toy["x"], toy["y"]
    with torch.no_grad():
        own = net(x).argmax(1)
    x_fgm, x_pgd = fgm(net, x, EPS), pgd(net, x, EPS, STEPS, EPS / 4, 1, seeded(0))
    assert summed_loss(net, x_pgd, own).sum() >= summed_loss(net, x_fgm, own).sum()
    with torch.no_grad():
        fgm_accuracy = (net(x_fgm).argmax(1) == y).float().mean().item()
        pgd_accuracy = (net(x_pgd).argmax(1) == y).float().mean().item()
    assert pgd_accuracy <= fgm_accuracy < 1.0


def test_more_restarts_never_lose_ground_per_image(toy):
    net, x = toy["net"], toy["x"]
    eps = 0.07  # some images fall and some hold, so both arms of the restart rule are exercised
    with torch.no_grad():
        own = net(x).argmax(1)
    one = pgd(net, x, eps, 3, eps / 2, 1, seeded(1))
    four = pgd(net, x, eps, 3, eps / 2, 4, seeded(1))  # its first restart is `one`: same draws
    assert not torch.equal(one, four), "the extra restarts changed nothing: the test would prove nothing"
    with torch.no_grad():
        fooled_one, fooled_four = net(one).argmax(1) != own, net(four).argmax(1) != own
    loss_one, loss_four = summed_loss(net, one, own), summed_loss(net, four, own)
    assert (fooled_four >= fooled_one).all()
    same = fooled_four == fooled_one
    assert (loss_four[same] >= loss_one[same]).all()
    assert 0 < fooled_four.float().mean().item() < 1


def test_pgd_rejects_a_bad_budget(toy):
    x = toy["x"][:2]
    for kwargs in (dict(eps=-0.1), dict(eps=2.0), dict(steps=-1), dict(restarts=0), dict(step_size=-1.0)):
        arguments = dict(eps=EPS, steps=1, step_size=0.01, restarts=1) | kwargs
        with pytest.raises(ValueError):
            pgd(toy["net"], x, generator=seeded(), **arguments)


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


def naive_soft_knn(fit, fit_labels, queries, temperature, k):
    """The formula, one query at a time in float64: log sum over a class of softmax(cos / T)."""
    rows = []
    for query in queries.double():
        sims = fit.double() @ query
        keep = sims.topk(k).indices if k is not None else torch.arange(len(fit))
        weights = torch.softmax(sims[keep] / temperature, dim=0)
        mass = torch.zeros(NUM_CLASSES, dtype=torch.float64).index_add_(0, fit_labels[keep], weights)
        rows.append(mass.log())
    return torch.stack(rows)


@pytest.mark.parametrize("k", [None, 7])
def test_soft_knn_score_is_the_log_class_mass_of_the_similarity_softmax(k):
    fit, fit_labels = clustered_unit_vectors(30, seed=0)
    queries, _ = clustered_unit_vectors(5, seed=1)
    score = soft_knn_score(UnitVectors(), fit, fit_labels, NUM_CLASSES, temperature=0.5, k=k)
    expected = naive_soft_knn(fit, fit_labels, queries, 0.5, k)
    got = score(queries).double()
    present = torch.isfinite(expected)  # with k, classes outside the neighbourhood have no mass
    assert torch.allclose(got[present], expected[present], atol=1e-5)
    assert (got[~present] < expected[present].min() - 50).all()
    assert torch.allclose(got.exp().sum(1), torch.ones(len(queries), dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("k", [None, attacks.DEFAULT_SOFT_KNN_K])
def test_soft_knn_argmax_agrees_with_the_3nn_at_a_small_temperature(k):
    fit, fit_labels = clustered_unit_vectors(100, seed=0)
    queries, query_labels = clustered_unit_vectors(50, seed=1)
    score = soft_knn_score(UnitVectors(), fit, fit_labels, NUM_CLASSES, temperature=0.05, k=k)
    knn = knn_predict(fit, fit_labels, queries, 3)
    knn_accuracy = (knn == query_labels).float().mean().item()
    assert 0.7 < knn_accuracy < 0.9  # the 3-NN makes mistakes here, so agreeing with it is not trivial
    agreement = (score(queries).argmax(1) == knn).float().mean().item()
    # The surrogate follows the 3-NN, mistakes included, more closely than the truth does.
    assert agreement > 0.88 and agreement > knn_accuracy + 0.05


def test_soft_knn_gradients_stay_finite_where_classes_have_no_mass():
    fit, fit_labels = clustered_unit_vectors(30, seed=0)
    queries = clustered_unit_vectors(3, seed=1)[0].requires_grad_(True)
    # T = 0.001: almost every class's mass underflows to zero in float32.
    logits = soft_knn_score(UnitVectors(), fit, fit_labels, NUM_CLASSES, temperature=0.001)(queries)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)), queries)
    assert torch.isfinite(logits).all() and torch.isfinite(grad).all()


def test_nearest_indices_do_not_depend_on_the_block_size(monkeypatch):
    fit, _ = clustered_unit_vectors(30, seed=0)
    queries, _ = clustered_unit_vectors(4, seed=1)
    whole = nearest_indices(queries, fit, 9)
    assert torch.equal(whole, (queries @ fit.T).topk(9, dim=1).indices)
    monkeypatch.setattr(attacks, "SIMILARITY_CHUNK", 7)  # blocks smaller than k, and a ragged last block
    assert torch.equal(nearest_indices(queries, fit, 9), whole)


def test_pgd_on_the_soft_knn_score_lowers_knn_accuracy(toy):
    net, fit, fit_labels, x, y = toy["net"], toy["train_embeddings"], toy["train_labels"], toy["x"], toy["y"]
    with torch.no_grad():
        clean = knn_accuracy(fit, fit_labels, net.embed(x), y)
        attacked = knn_accuracy(fit, fit_labels, net.embed(run_attack("pgd_soft_knn", toy, x, EPS)), y)
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


def test_guides_are_the_k_nearest_of_the_nearest_other_class():
    fit, fit_labels = clustered_unit_vectors(20, seed=0)
    queries, query_labels = clustered_unit_vectors(4, seed=1)
    away_from = knn_predict(fit, fit_labels, queries, 3)
    guides = choose_guides(queries, fit, fit_labels, away_from, 3)
    assert guides.shape == (len(queries), 3)
    assert [sorted(row) for row in guides.tolist()] == naive_guides(queries, fit, fit_labels, away_from, 3)
    assert (fit_labels[guides] != away_from.unsqueeze(1)).all()
    # Moving away from the true label instead gives other guides for the misclassified queries only.
    by_truth = choose_guides(queries, fit, fit_labels, query_labels, 3)
    same_reference = away_from == query_labels
    assert torch.equal(by_truth[same_reference], guides[same_reference])


def test_guide_attack_lowers_knn_accuracy_and_pulls_towards_the_guides(toy):
    net, fit, fit_labels, x, y = toy["net"], toy["train_embeddings"], toy["train_labels"], toy["x"], toy["y"]
    x_adv = run_attack("guide", toy, x, EPS)
    with torch.no_grad():
        clean_embeddings, adv_embeddings = net.embed(x), net.embed(x_adv)
    assert knn_accuracy(fit, fit_labels, adv_embeddings, y) < knn_accuracy(fit, fit_labels, clean_embeddings, y) - 0.3
    guides = choose_guides(clean_embeddings, fit, fit_labels, knn_predict(fit, fit_labels, clean_embeddings, 3), 3)
    similarity = lambda e: torch.einsum("bd,bkd->b", e, fit[guides]) / 3
    assert (similarity(adv_embeddings) > similarity(clean_embeddings)).float().mean().item() > 0.95


def test_guide_attack_refuses_classes_smaller_than_k(toy):
    fit, fit_labels = toy["train_embeddings"], toy["train_labels"].clone()
    fit_labels[fit_labels == 3] = 4
    fit_labels[0] = 3  # class 3 now has one training embedding
    with pytest.raises(ValueError, match="fewer than k"):
        guide_sample_attack(toy["net"], toy["x"][:4], fit, fit_labels, EPS, 1, 0.01, 3, seeded())


# ---------------------------------------------------------------------------------------------
# Worst case
# ---------------------------------------------------------------------------------------------


def test_worst_case_counts_an_image_as_robust_only_if_every_attack_failed():
    correct = {
        "fgm": torch.tensor([True, True, False, True, False]),
        "pgd": torch.tensor([True, False, True, True, False]),
        "guide": torch.tensor([True, True, True, False, False]),
    }
    assert torch.equal(worst_case(correct), torch.tensor([True, False, False, False, False]))
    assert torch.equal(worst_case({"fgm": correct["fgm"]}), correct["fgm"])


@pytest.mark.parametrize("bad", [
    {},
    {"fgm": torch.tensor([True, False]), "pgd": torch.tensor([True, False, True])},
    {"fgm": torch.tensor([1, 0])},                     # labels or predictions, not correctness
    {"fgm": torch.tensor([[True], [False]])},
])
def test_worst_case_refuses_what_is_not_per_image_correctness(bad):
    with pytest.raises(ValueError):
        worst_case(bad)
