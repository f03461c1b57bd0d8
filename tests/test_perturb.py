import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robust_cifar.perturbations.perturb import (
    KINDS,
    NOISE_BLOCK,
    PerturbDraw,
    PerturbSettings,
    SplitPlan,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    apply_perturbations,
    color_jitter,
    draw_jitter_factors,
    draw_noise,
    draw_perturbations,
    fgm,
    load_plans,
    make_plan,
    pad_to_bucket,
    plan_draw,
    rgb_to_grey,
    save_plans,
)
from tests.toys import fit

SETTINGS = PerturbSettings()
SHAPE = (3, 8, 8)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images(n, seed=0, shape=SHAPE, device="cpu"):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed)).to(device)


def within_binomial(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# ---------------------------------------------------------------------------------------------
# FGM
# ---------------------------------------------------------------------------------------------


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


@pytest.fixture(scope="module")
def trained_net():
    """A small net trained to decent held-out accuracy on linearly separable synthetic images."""
    directions = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(2))

    def labelled(n, seed):
        x = images(n, seed=seed)
        return x, torch.einsum("bchw,kchw->bk", x - 0.5, directions).argmax(1)

    x, y = labelled(2048, seed=1)
    torch.manual_seed(0)
    net = fit(tiny_net(), x, y, steps=100, lr=0.01)
    x_test, y_test = labelled(512, seed=100)
    with torch.no_grad():
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.75, f"tiny net failed to learn ({accuracy:.2f}); FGM tests would be meaningless"
    return net


def loss_against_own_predictions(net, x, labels):
    with torch.no_grad():
        return F.cross_entropy(net(x), labels, reduction="sum").item()


def test_fgm_stays_in_eps_ball_and_pixel_range(trained_net):
    x = images(64, seed=3)
    eps = SETTINGS.fgm_eps
    x_adv = fgm(trained_net, x, eps)
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert not x_adv.requires_grad
    # Unclamped, untied elements move by exactly eps.
    assert ((x_adv - x).abs() > eps - 1e-6).float().mean().item() > 0.9


def test_fgm_increases_loss_of_trained_model(trained_net):
    x = images(256, seed=4)
    with torch.no_grad():
        labels = trained_net(x).argmax(1)
    clean = loss_against_own_predictions(trained_net, x, labels)
    adversarial = loss_against_own_predictions(trained_net, fgm(trained_net, x, 0.05), labels)
    assert adversarial > 1.5 * clean
    with torch.no_grad():
        flipped = (trained_net(fgm(trained_net, x, 0.05)).argmax(1) != labels).float().mean().item()
    assert flipped > 0.05


def test_fgm_matches_manual_gradient_sign_and_leaves_parameter_grads(trained_net):
    x = images(32, seed=5)
    eps = 0.03
    x_adv = fgm(trained_net, x, eps)
    assert all(p.grad is None for p in trained_net.parameters())

    x_manual = x.clone().requires_grad_(True)
    logits = trained_net(x_manual)
    F.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum").backward()
    expected = (x + eps * x_manual.grad.sign()).clamp(0, 1)
    for p in trained_net.parameters():
        p.grad = None
    assert torch.equal(x_adv, expected)


def test_fgm_works_under_no_grad_and_per_image(trained_net):
    # Eval loops run under no_grad; per-image results must not depend on batch composition.
    x = images(40, seed=6)
    reference = fgm(trained_net, x, 0.02)
    with torch.no_grad():
        under_no_grad = fgm(trained_net, x, 0.02)
    halves = torch.cat([fgm(trained_net, x[:13], 0.02), fgm(trained_net, x[13:], 0.02)])
    assert torch.equal(reference, under_no_grad)
    assert torch.allclose(reference, halves, atol=1e-6)


def test_fgm_under_autocast(trained_net):
    x = images(64, seed=7)
    with torch.no_grad():
        labels = trained_net(x).argmax(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = fgm(trained_net, x, 0.05)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max().item() <= 0.05 + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    clean = loss_against_own_predictions(trained_net, x, labels)
    assert loss_against_own_predictions(trained_net, x_adv, labels) > clean
    assert all(p.grad is None for p in trained_net.parameters())


# ---------------------------------------------------------------------------------------------
# Colour jitter
# ---------------------------------------------------------------------------------------------


def test_rgb_to_grey_uses_torchvision_weights():
    x = torch.zeros(3, 3, 2, 2)
    for c in range(3):
        x[c, c] = 1.0
    grey = rgb_to_grey(x)
    assert grey.shape == (3, 1, 2, 2)
    assert torch.allclose(grey[:, 0, 0, 0], torch.tensor([0.2989, 0.587, 0.114]))


def test_jitter_factor_one_is_identity():
    x = images(8)
    assert torch.equal(color_jitter(x, torch.ones(8, 3)), x)


def test_brightness_scales_then_clamps():
    x = images(6)
    f = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.3, 2.0])
    out = adjust_brightness(x, f)
    assert torch.allclose(out, (f.view(-1, 1, 1, 1) * x).clamp(0, 1))
    dark = x * 0.5  # max 0.5, so a factor up to 2 never clamps
    assert torch.allclose(adjust_brightness(dark, f), f.view(-1, 1, 1, 1) * dark)
    assert (out[-1][x[-1] > 0.5] == 1).all()


def test_zero_saturation_gives_greyscale():
    x = images(4)
    out = adjust_saturation(x, torch.zeros(4))
    grey = rgb_to_grey(x)
    for c in range(3):
        assert torch.allclose(out[:, c : c + 1], grey, atol=1e-6)


def test_zero_contrast_gives_constant_mean_grey():
    x = images(4)
    out = adjust_contrast(x, torch.zeros(4))
    mean_grey = rgb_to_grey(x).mean(dim=(1, 2, 3))
    assert torch.allclose(out, mean_grey.view(-1, 1, 1, 1).expand_as(out), atol=1e-6)
    # Means are per image, not per batch.
    assert mean_grey.unique().numel() == 4


def test_color_jitter_is_brightness_then_contrast_then_saturation():
    x = images(8)
    factors = draw_jitter_factors(8, PerturbSettings(brightness=0.8, contrast=0.8, saturation=0.8), torch.Generator().manual_seed(3), "cpu")
    expected = adjust_saturation(adjust_contrast(adjust_brightness(x, factors[:, 0]), factors[:, 1]), factors[:, 2])
    assert torch.equal(color_jitter(x, factors), expected)
    # The order matters for these factors, so the check above pins it down.
    swapped = adjust_contrast(adjust_saturation(adjust_brightness(x, factors[:, 0]), factors[:, 2]), factors[:, 1])
    assert not torch.allclose(color_jitter(x, factors), swapped, atol=1e-4)


def test_jitter_factors_are_per_image():
    x = images(1).expand(5, *SHAPE)
    factors = draw_jitter_factors(5, SETTINGS, torch.Generator().manual_seed(0), "cpu")
    out = color_jitter(x, factors)
    for i in range(5):
        assert torch.allclose(out[i : i + 1], color_jitter(x[:1], factors[i : i + 1]), atol=1e-6)
    for i in range(1, 5):
        assert not torch.allclose(out[0], out[i])


def test_jitter_output_in_pixel_range_for_extreme_factors():
    x = images(64)
    wild = PerturbSettings(brightness=1.5, contrast=1.5, saturation=1.5)
    factors = draw_jitter_factors(64, wild, torch.Generator().manual_seed(1), "cpu")
    out = color_jitter(x, factors)
    assert out.min().item() >= 0 and out.max().item() <= 1


def test_jitter_factors_lie_in_their_ranges():
    factors = draw_jitter_factors(4000, SETTINGS, torch.Generator().manual_seed(2), "cpu")
    spreads = torch.tensor([SETTINGS.brightness, SETTINGS.contrast, SETTINGS.saturation])
    assert factors.shape == (4000, 3) and factors.dtype == torch.float32
    assert (factors >= 1 - spreads).all() and (factors <= 1 + spreads).all()
    # Uniform: the range is actually covered, not just respected.
    assert torch.allclose(factors.min(0).values, 1 - spreads, atol=0.01)
    assert torch.allclose(factors.max(0).values, 1 + spreads, atol=0.01)


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------


def test_noise_hits_about_noise_fraction_with_noise_std():
    x = torch.full((64, 3, 32, 32), 0.5)  # mid-grey: clamping is (practically) never hit
    draw = draw_perturbations(64, (3, 32, 32), SETTINGS, torch.Generator().manual_seed(3), "cpu").only("noise")
    out = apply_perturbations(x, draw, SETTINGS)
    delta = out - x
    changed = delta != 0
    assert within_binomial(changed.sum().item(), x.numel(), SETTINGS.noise_fraction)
    assert abs(delta[changed].std().item() - SETTINGS.noise_std) < 0.02 * SETTINGS.noise_std
    assert abs(delta[changed].mean().item()) < 0.02 * SETTINGS.noise_std
    # The mask is per element, not per image or per channel.
    per_image = changed.float().mean(dim=(1, 2, 3))
    assert (per_image - SETTINGS.noise_fraction).abs().max().item() < 0.05
    pixels = changed[:, 0].numel()
    assert within_binomial((changed[:, 0] & changed[:, 1]).sum().item(), pixels, SETTINGS.noise_fraction**2)


def test_draw_noise_is_masked_and_scaled():
    noise = draw_noise((32, 3, 16, 16), SETTINGS, torch.Generator().manual_seed(4), "cpu")
    nonzero = noise != 0
    assert within_binomial(nonzero.sum().item(), noise.numel(), SETTINGS.noise_fraction)
    assert abs(noise[nonzero].std().item() - SETTINGS.noise_std) < 0.03 * SETTINGS.noise_std


# ---------------------------------------------------------------------------------------------
# Draws, gating and apply_perturbations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_draw_perturbations_shapes_and_reproducibility(device):
    def draw():
        return draw_perturbations(10, SHAPE, SETTINGS, torch.Generator().manual_seed(5), device)

    a, b = draw(), draw()
    assert a.gates.shape == (10, 3) and a.gates.dtype == torch.bool
    assert a.jitter_factors.shape == (10, 3) and a.noise.shape == (10, *SHAPE)
    assert a.noise.device.type == device
    assert torch.equal(a.gates, b.gates) and torch.equal(a.noise, b.noise)
    assert torch.equal(a.jitter_factors, b.jitter_factors)


@pytest.mark.parametrize("kind", KINDS)
def test_only_gates_exactly_one_kind(kind):
    draw = draw_perturbations(50, SHAPE, SETTINGS, torch.Generator().manual_seed(6), "cpu")
    single = draw.only(kind)
    column = KINDS.index(kind)
    assert single.gates[:, column].all()
    assert not single.gates[:, [c for c in range(3) if c != column]].any()
    assert torch.equal(single.noise, draw.noise) and torch.equal(single.jitter_factors, draw.jitter_factors)
    assert not draw.gates.all(), "only() must not modify the original draw"


@pytest.mark.parametrize("device", DEVICES)
def test_ungated_rows_are_bit_identical(trained_net, device):
    net = trained_net.to(device)
    x = images(200, seed=8, device=device)
    draw = draw_perturbations(200, SHAPE, PerturbSettings(p=0.4), torch.Generator().manual_seed(7), device)
    out = apply_perturbations(x, draw, SETTINGS, score_fn=net)
    untouched = ~draw.gates.any(1)
    assert untouched.any() and (~untouched).any()
    assert torch.equal(out[untouched], x[untouched])
    assert (out[~untouched] != x[~untouched]).flatten(1).any(1).all()
    trained_net.to("cpu")


def test_fgm_attacks_exactly_its_gated_rows_as_if_alone(trained_net):
    x = images(64, seed=11)
    draw = draw_perturbations(64, SHAPE, SETTINGS, torch.Generator().manual_seed(10), "cpu")
    fgm_only = draw.only("fgm")
    fgm_only.gates[::2, 2] = False           # every other image is not attacked
    out = apply_perturbations(x, fgm_only, SETTINGS, score_fn=trained_net)
    attacked = fgm_only.gates[:, 2]
    assert torch.equal(out[~attacked], x[~attacked])
    alone = fgm(trained_net, x[attacked], SETTINGS.fgm_eps)
    assert torch.allclose(out[attacked], alone, atol=1e-6)
    assert (out[attacked] != x[attacked]).flatten(1).any(1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_shape_fgm_gives_the_images_of_fgm_on_the_gated_rows(trained_net, device):
    """FGM on every row, kept where gated (what a CUDA graph replays), is FGM on the gated rows alone."""
    net = trained_net.to(device)
    x = images(96, seed=12, device=device)
    draw = draw_perturbations(96, SHAPE, SETTINGS, torch.Generator().manual_seed(12), device)
    gated = apply_perturbations(x, draw, SETTINGS, score_fn=net)
    fixed = apply_perturbations(x, draw, SETTINGS, score_fn=net, fixed_shape=True)
    attacked = draw.gates[:, KINDS.index("fgm")].to(device)
    assert attacked.any() and (~attacked).any()
    assert torch.equal(fixed[~attacked], gated[~attacked])
    torch.testing.assert_close(fixed[attacked], gated[attacked], rtol=0, atol=1e-6)
    trained_net.to("cpu")


def test_fgm_gate_ignored_without_score_fn():
    x = images(20, seed=9)
    draw = draw_perturbations(20, SHAPE, SETTINGS, torch.Generator().manual_seed(8), "cpu").only("fgm")
    assert torch.equal(apply_perturbations(x, draw, SETTINGS), x)


def test_perturbations_apply_in_order_jitter_noise_fgm(trained_net):
    x = images(16, seed=10)
    draw = draw_perturbations(16, SHAPE, SETTINGS, torch.Generator().manual_seed(9), "cpu")
    draw = PerturbDraw(torch.ones_like(draw.gates), draw.jitter_factors, draw.noise)
    noised = (color_jitter(x, draw.jitter_factors) + draw.noise).clamp(0, 1)
    assert torch.equal(apply_perturbations(x, draw, SETTINGS), noised)
    expected = fgm(trained_net, noised, SETTINGS.fgm_eps)
    assert torch.equal(apply_perturbations(x, draw, SETTINGS, score_fn=trained_net), expected)


# ---------------------------------------------------------------------------------------------
# Seeded evaluation plans
# ---------------------------------------------------------------------------------------------

N_PLAN = 2 * NOISE_BLOCK + 300  # spans three noise blocks, the last one partial


def perturbed_split(seed, x):
    plan = make_plan(len(x), SETTINGS, seed)
    draw = plan_draw(plan, 0, len(x), SHAPE, "cpu")
    # A digest keeps pytest from diffing megabytes of bytes on failure.
    return hashlib.sha256(apply_perturbations(x, draw, SETTINGS).numpy().tobytes()).hexdigest()


def test_same_seed_gives_byte_identical_perturbed_sets():
    x = images(N_PLAN, seed=11)
    assert perturbed_split(123, x) == perturbed_split(123, x)
    assert perturbed_split(123, x) != perturbed_split(124, x)


def test_plan_draw_is_independent_of_batching():
    plan = make_plan(N_PLAN, SETTINGS, seed=7)
    whole = plan_draw(plan, 0, N_PLAN, SHAPE, "cpu")
    bounds = [0, 7, 1030, 1031, 2049, N_PLAN]
    parts = [plan_draw(plan, a, b, SHAPE, "cpu") for a, b in zip(bounds, bounds[1:])]
    assert torch.equal(whole.gates, torch.cat([p.gates for p in parts]))
    assert torch.equal(whole.jitter_factors, torch.cat([p.jitter_factors for p in parts]))
    assert torch.equal(whole.noise, torch.cat([p.noise for p in parts]))
    # Blocks must not repeat each other's noise.
    assert not torch.equal(whole.noise[:NOISE_BLOCK], whole.noise[NOISE_BLOCK : 2 * NOISE_BLOCK])


def test_plan_gate_rates_and_independence():
    n, p = 20000, SETTINGS.p
    gates = make_plan(n, SETTINGS, seed=3).gates
    assert gates.dtype == bool and gates.shape == (n, 3)
    for column in range(3):
        assert within_binomial(gates[:, column].sum(), n, p)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert within_binomial((gates[:, a] & gates[:, b]).sum(), n, p * p)
    assert within_binomial(gates.all(1).sum(), n, p**3)


def test_plans_round_trip_through_npz_byte_identically(tmp_path):
    plans = {"train": make_plan(200, SETTINGS, 0), "val": make_plan(300, SETTINGS, 2), "test": make_plan(500, SETTINGS, 1)}
    save_plans(plans, tmp_path / "a.npz", seed=5)
    save_plans(plans, tmp_path / "b.npz", seed=5)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_plans(tmp_path / "a.npz")
    assert loaded.keys() == plans.keys()
    for name, plan in plans.items():
        got = loaded[name]
        assert isinstance(got, SplitPlan)
        assert np.array_equal(got.gates, plan.gates) and got.gates.dtype == bool
        assert np.array_equal(got.jitter_factors, plan.jitter_factors) and got.jitter_factors.dtype == np.float32
        assert got.noise_seed == plan.noise_seed and isinstance(got.noise_seed, int)


@pytest.mark.parametrize("count, limit, size", [(1, 256, 32), (32, 256, 32), (33, 256, 64), (77, 256, 96),
                                                (20, 20, 20), (5, 10, 10), (250, 256, 256)])
def test_fgm_rows_are_padded_to_few_shapes_with_the_attacked_rows_first(count, limit, size):
    rows = torch.arange(count) * 3
    padded = pad_to_bucket(rows, limit)
    assert len(padded) == size
    assert torch.equal(padded[:count], rows)
    assert set(padded.tolist()) == set(rows.tolist())   # padding only repeats attacked rows
