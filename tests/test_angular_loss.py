import math

import pytest
import torch
import torch.nn.functional as F

from robust_cifar.training.angular_loss import angular_loss

ALPHAS = [30.0, 40.0, 45.0, 50.0]


def naive_angular_loss(embeddings, labels, alpha_degrees):
    """Straight from the formula, one (a, p, n) at a time, in Python floats (float64)."""
    x = embeddings.detach().double().tolist()
    y = labels.tolist()
    t = math.tan(math.radians(alpha_degrees)) ** 2

    def dot(u, v):
        return sum(ui * vi for ui, vi in zip(u, v))

    pair_losses = []
    for a in range(len(x)):
        for p in range(len(x)):
            if a == p or y[a] != y[p]:
                continue
            total = 0.0
            for n in range(len(x)):
                if y[n] == y[a]:
                    continue
                x_ap = [xa + xp for xa, xp in zip(x[a], x[p])]
                total += math.exp(4 * t * dot(x_ap, x[n]) - 2 * (1 + t) * dot(x[a], x[p]))
            pair_losses.append(math.log(1 + total))
    return sum(pair_losses) / len(pair_losses)


def random_batch(class_counts, dim=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(class_counts)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    embeddings = F.normalize(torch.randn(len(labels), dim, generator=g, dtype=torch.float64), dim=1)
    return embeddings.to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("class_counts", [(3, 4, 2), (5, 1, 3, 2)])
def test_matches_naive_loop(dtype, alpha, class_counts):
    embeddings, labels = random_batch(class_counts, dtype=dtype, seed=int(alpha))
    loss = angular_loss(embeddings, labels, alpha)
    assert loss.dtype == dtype
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(naive_angular_loss(embeddings, labels, alpha), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradient_is_finite_and_matches_finite_differences(alpha):
    embeddings, labels = random_batch((3, 4, 2), dim=4, dtype=torch.float64, seed=3)
    embeddings.requires_grad_(True)
    loss = angular_loss(embeddings, labels, alpha)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    assert embeddings.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda e: angular_loss(e, labels, alpha), (embeddings.detach().requires_grad_(),))


def test_float32_gradient_is_finite():
    embeddings, labels = random_batch((5, 5, 5, 5), dim=16, seed=7)
    embeddings.requires_grad_(True)
    angular_loss(embeddings, labels, 45.0).backward()
    assert torch.isfinite(embeddings.grad).all()


def test_separated_clusters_score_lower_than_collapsed_ones():
    labels = torch.arange(4).repeat_interleave(5)
    g = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.randn(20, 8, generator=g)
    separated = F.normalize(torch.eye(8)[labels] + noise, dim=1)
    collapsed = F.normalize(torch.eye(8)[torch.zeros_like(labels)] + noise, dim=1)
    for alpha in ALPHAS:
        assert angular_loss(separated, labels, alpha) < angular_loss(collapsed, labels, alpha) - 1.0


@pytest.mark.parametrize("alpha", [0.0, -10.0, 90.0, 120.0, float("nan")])
def test_alpha_outside_open_interval_raises(alpha):
    embeddings, labels = random_batch((2, 2))
    with pytest.raises(ValueError, match="alpha must be in"):
        angular_loss(embeddings, labels, alpha)


def test_batch_without_positive_pairs_gives_zero_with_grad():
    embeddings, labels = random_batch((1, 1, 1))
    embeddings.requires_grad_(True)
    loss = angular_loss(embeddings, labels, 40.0)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_single_class_batch_has_no_negatives_so_zero_loss():
    embeddings, labels = random_batch((4,))
    assert angular_loss(embeddings, labels, 40.0).item() == 0.0


def test_half_precision_input_and_autocast_compute_in_float32():
    embeddings, labels = random_batch((3, 4, 2), seed=11)
    expected = naive_angular_loss(embeddings.bfloat16(), labels, 45.0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = angular_loss(embeddings.bfloat16(), labels, 45.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_large_alpha_does_not_overflow():
    # tan^2(89 deg) ~ 3300: exponents in the thousands, naive exp would be inf.
    embeddings, labels = random_batch((3, 3, 3), seed=5)
    embeddings.requires_grad_(True)
    loss = angular_loss(embeddings, labels, 89.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("class_counts", [(3, 4, 2), (5, 1, 3, 2), (1, 1, 1)])
def test_matches_pytorch_metric_learning(alpha, class_counts):
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    embeddings, labels = random_batch(class_counts, seed=int(alpha) + 1)
    ours_input = embeddings.clone().requires_grad_(True)
    theirs_input = embeddings.clone().requires_grad_(True)
    ours = angular_loss(ours_input, labels, alpha)
    theirs = pml_losses.AngularLoss(alpha=alpha)(theirs_input, labels)
    assert ours.item() == pytest.approx(float(torch.as_tensor(theirs).detach()), rel=1e-5, abs=1e-6)
    if ours.requires_grad and torch.is_tensor(theirs) and theirs.requires_grad:
        ours.backward()
        theirs.backward()
        # PML re-normalizes anchors/positives but not the negatives, so the two raw
        # gradients differ along the radial direction; on the unit sphere (what a model
        # ending in F.normalize feeds back) only the tangential part matters.
        torch.testing.assert_close(
            tangential(ours_input.grad, embeddings), tangential(theirs_input.grad, embeddings),
            rtol=1e-4, atol=1e-5,
        )


def tangential(grad, unit_rows):
    return grad - (grad * unit_rows).sum(dim=1, keepdim=True) * unit_rows
