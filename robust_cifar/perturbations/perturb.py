"""Pixel-space perturbations for the robustness study: colour jitter, sparse Gaussian noise and FGM.

Images are float tensors (B, 3, H, W) in [0, 1]; normalisation lives inside the model, so every
perturbation here works on raw pixels. Each perturbation hits an image independently with
probability ``p``, in the fixed order jitter -> noise -> FGM, clamping to [0, 1] after each.

All randomness is drawn up front into a :class:`PerturbDraw`, so a perturbed batch is fully
determined by (images, draw, settings) plus, for FGM only, the model. Evaluation uses a seeded
:class:`SplitPlan` so every model is scored on exactly the same jitter/noise/gating choices.
Everything is batched and stays on the device of the input tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from os import PathLike
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robust_cifar.conditions import KINDS, SPLITS  # KINDS: also the column order of PerturbDraw.gates / SplitPlan.gates
from robust_cifar.npz import load_npz, save_npz
from robust_cifar.params import BELOW_ONE, PROBABILITY, Params, bounded_real
from robust_cifar.schema import Array, check_arrays, refuse

ScoreFn = Callable[[Tensor], Tensor]


# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
GREY_WEIGHTS = (0.2989, 0.587, 0.114)

NOISE_BLOCK = 1024


@dataclass(frozen=True)
class PerturbSettings:
    p: float = 0.3
    brightness: float = 0.3
    contrast: float = 0.2
    saturation: float = 0.1
    noise_std: float = 0.0125  # pixel units; the write-up's 0.05 was in normalized units (~0.05*0.25)
    noise_fraction: float = 0.3  # fraction of an image's elements that get noise
    fgm_eps: float = 0.025  # pixel units (params give it in 1/255: 6.375, the write-up's 0.1 in normalized units)

    @classmethod
    def from_params(cls, params: Params, section: str = "perturb", with_fgm: bool = True) -> "PerturbSettings":
        """The perturbations defined under `section` (the evaluation's `perturb`, or a method's
        training-time `<method>.perturb`); `with_fgm=False` for the plan, which never attacks."""
        return cls(
            p=params.value(f"{section}.p", PROBABILITY),
            brightness=params.value(f"{section}.jitter.brightness", BELOW_ONE),
            contrast=params.value(f"{section}.jitter.contrast", BELOW_ONE),
            saturation=params.value(f"{section}.jitter.saturation", BELOW_ONE),
            noise_std=params.value(f"{section}.noise.std", bounded_real(0, 1, "pixel units; images are in [0, 1]")),
            noise_fraction=params.value(f"{section}.noise.fraction", PROBABILITY),
            fgm_eps=fgm_eps_from_params(params, section) if with_fgm else 0.0,
        )


EPS_255 = bounded_real(0, 255, "L-inf, in units of 1/255; the write-up's 0.1 in normalized units is 6.375")


def study_eps_255(params: Params) -> float:
    """The study's attack size in 1/255 (`perturb.fgm.eps_255`): the evaluation's FGM, and where robust
    accuracy is reported."""
    return params.value("perturb.fgm.eps_255", EPS_255)


def fgm_eps_from_params(params: Params, section: str = "perturb") -> float:
    """The FGM eps of `section` in pixel units: params.yaml sets every eps in 1/255 (`<section>.fgm.eps_255`)."""
    return params.value(f"{section}.fgm.eps_255", EPS_255) / 255


@dataclass
class PerturbDraw:
    """Every random choice for one batch; the perturbation itself is this draw plus (for FGM) a model."""

    gates: Tensor  # bool (B, 3): which of KINDS hit each image
    jitter_factors: Tensor  # float (B, 3): brightness, contrast, saturation factors
    noise: Tensor  # float (B, 3, H, W): std-scaled, zero outside the ~noise_fraction mask

    def rows(self, start: int, stop: int) -> "PerturbDraw":
        """The draw of images [start, stop)."""
        return PerturbDraw(self.gates[start:stop], self.jitter_factors[start:stop], self.noise[start:stop])

    @staticmethod
    def concat(draws: "list[PerturbDraw]") -> "PerturbDraw":
        return PerturbDraw(torch.cat([d.gates for d in draws]), torch.cat([d.jitter_factors for d in draws]),
                           torch.cat([d.noise for d in draws]))

    def only(self, kind: str) -> "PerturbDraw":
        """Same factors and noise, but every image gets exactly ``kind`` (for per-perturbation columns)."""
        column = KINDS.index(kind)
        gates = torch.zeros_like(self.gates)
        gates[:, column] = True
        return replace(self, gates=gates)


# ---------------------------------------------------------------------------------------------
# Colour jitter (torchvision semantics, per-image factors, fixed order)
# ---------------------------------------------------------------------------------------------


def _per_image(f: Tensor, x: Tensor) -> Tensor:
    """Shape per-image factors (B,) so they broadcast over (B, C, H, W) in x's dtype and device."""
    return f.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    f = _per_image(f, x)
    return (f * x + (1 - f) * other).clamp(0, 1)


def rgb_to_grey(x: Tensor) -> Tensor:
    # Python-scalar weights: a weight tensor built on the host would cost a host->device copy,
    # which synchronises the CUDA stream on every call.
    r, g, b = GREY_WEIGHTS
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return (_per_image(f, x) * x).clamp(0, 1)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    mean_grey = rgb_to_grey(x).mean(dim=(-2, -1), keepdim=True)
    return _blend(x, mean_grey, f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, rgb_to_grey(x), f)


def color_jitter(x: Tensor, factors: Tensor) -> Tensor:
    """Brightness -> contrast -> saturation with per-image factors (B, 3).

    torchvision shuffles the order per call; we fix it so a draw fully determines the result.
    """
    x = adjust_brightness(x, factors[:, 0])
    x = adjust_contrast(x, factors[:, 1])
    return adjust_saturation(x, factors[:, 2])


# ---------------------------------------------------------------------------------------------
# Random draws
# ---------------------------------------------------------------------------------------------


def _rand(shape, generator: torch.Generator | None, device, normal: bool = False) -> Tensor:
    """Sample on the generator's own device (torch requires it), then move to ``device``.

    A CUDA generator with a CUDA device keeps everything on the GPU; a CPU generator gives
    device-independent values, which is what the seeded evaluation plan relies on.
    """
    source = generator.device if generator is not None else device
    sample = torch.randn if normal else torch.rand
    return sample(shape, generator=generator, device=source).to(device)


def draw_jitter_factors(n: int, settings: PerturbSettings, generator, device) -> Tensor:
    uniform = _rand((n, 3), generator, device)
    columns = []
    for column, spread in enumerate((settings.brightness, settings.contrast, settings.saturation)):
        # torchvision clips the lower bound at 0: a negative factor would invert the image.
        low, high = max(0.0, 1 - spread), 1 + spread
        columns.append(low + (high - low) * uniform[:, column])
    return torch.stack(columns, dim=1)


def draw_noise(shape, settings: PerturbSettings, generator, device) -> Tensor:
    gaussian = _rand(shape, generator, device, normal=True) * settings.noise_std
    mask = _rand(shape, generator, device) < settings.noise_fraction
    return gaussian * mask


def draw_gates(n: int, settings: PerturbSettings, generator, device) -> Tensor:
    return _rand((n, len(KINDS)), generator, device) < settings.p


def draw_perturbations(n: int, image_shape, settings: PerturbSettings, generator, device) -> PerturbDraw:
    """Fresh draws for one batch (adversarial training draws these on the fly)."""
    gates = draw_gates(n, settings, generator, device)
    factors = draw_jitter_factors(n, settings, generator, device)
    noise = draw_noise((n, *image_shape), settings, generator, device)
    return PerturbDraw(gates=gates, jitter_factors=factors, noise=noise)


# ---------------------------------------------------------------------------------------------
# FGM and applying a draw
# ---------------------------------------------------------------------------------------------


def fgm(score_fn: ScoreFn, x: Tensor, eps: float) -> Tensor:
    """Untargeted L-inf fast gradient sign step against the model's own predictions.

    Labels are argmax(score_fn(x)) as in cleverhans with y=None, so no ground truth is needed
    and a misclassified image is pushed further away from what the model believes.
    The caller is responsible for eval mode (batch-norm statistics must not mix rows).
    """
    # enable_grad: evaluation loops usually run under no_grad, but FGM needs the input gradient.
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        # float32 loss: under autocast the logits may be half precision, and a half-precision
        # cross-entropy loses small gradients to underflow.
        logits = score_fn(x_in).float()
        labels = logits.argmax(dim=1).detach()
        # Summed, not averaged, so per-image gradients don't shrink with batch size.
        loss = F.cross_entropy(logits, labels, reduction="sum")
        # autograd.grad w.r.t. the input only: parameters' .grad stay untouched.
        (grad,) = torch.autograd.grad(loss, x_in)
    return (x.detach() + eps * grad.sign()).clamp(0, 1).to(x.dtype)


# The number of rows FGM runs on is rounded up to a multiple of this. With cuDNN's benchmark mode
# every new batch shape is timed afresh (measured on an H200: 141 img/s of adversarial training
# when each batch attacked a different number of rows); buckets keep the shapes few.
FGM_ROW_BUCKET = 32


def pad_to_bucket(rows: Tensor, limit: int) -> Tensor:
    """`rows` followed by repeats of its first entries, up to a multiple of FGM_ROW_BUCKET (at most
    `limit`). In eval mode a row's attack does not depend on the others, so the padding is discarded."""
    size = min(-(-len(rows) // FGM_ROW_BUCKET) * FGM_ROW_BUCKET, max(limit, len(rows)))
    return rows.repeat(-(-size // len(rows)))[:size]


def _rows(gates: Tensor, kind: str) -> Tensor:
    return gates[:, KINDS.index(kind)].view(-1, 1, 1, 1)


def apply_perturbations(x: Tensor, draw: PerturbDraw, settings: PerturbSettings, score_fn: ScoreFn | None = None,
                        fixed_shape: bool = False) -> Tensor:
    """Apply the gated perturbations in order jitter -> noise -> FGM; ungated rows pass through bit-identical.

    Jitter and noise are computed for the whole batch and selected with torch.where (cheap, and
    no host sync). FGM, a forward and backward pass, is computed only for its gated rows (about
    p of the batch): that costs one host sync to learn which rows, and saves a full-batch pass.
    With ``fixed_shape`` FGM runs on every row and keeps its gated ones instead: 1/p more work,
    but no host read and the same shapes at every call, which a CUDA graph needs. The model must
    be in eval mode, so a row's attack does not depend on the other rows (both ways give the same
    images). FGM sees the already jittered/noised images of its rows.

    If ``score_fn`` is None (or ``settings.fgm_eps`` is 0) the FGM gate is ignored, so such
    rows only get whatever jitter/noise they were gated for.
    """
    gates = draw.gates.to(x.device)
    x = torch.where(_rows(gates, "jitter"), color_jitter(x, draw.jitter_factors), x)
    noisy = (x + draw.noise.to(device=x.device, dtype=x.dtype)).clamp(0, 1)
    x = torch.where(_rows(gates, "noise"), noisy, x)
    if score_fn is None or settings.fgm_eps == 0:
        return x
    if fixed_shape:
        return torch.where(_rows(gates, "fgm"), fgm(score_fn, x, settings.fgm_eps), x)
    attacked = gates[:, KINDS.index("fgm")].nonzero().squeeze(1)
    if not len(attacked):
        return x
    padded = pad_to_bucket(attacked, len(x))
    return x.index_copy(0, attacked, fgm(score_fn, x[padded], settings.fgm_eps)[: len(attacked)])


# ---------------------------------------------------------------------------------------------
# Seeded evaluation plans
# ---------------------------------------------------------------------------------------------


@dataclass
class SplitPlan:
    """Fixed perturbation choices for one evaluation split; identical across reruns and models.

    It carries the settings it was drawn with, so a stage that applies it needs no perturbation
    params beyond FGM's eps (the one part that is computed per model).
    """

    gates: np.ndarray  # bool (N, 3)
    jitter_factors: np.ndarray  # float32 (N, 3)
    noise_seed: int
    settings: PerturbSettings  # with fgm_eps = 0: FGM is not part of the plan

    def with_fgm(self, eps: float) -> PerturbSettings:
        return replace(self.settings, fgm_eps=eps)


def make_plan(n_images: int, settings: PerturbSettings, seed: int) -> SplitPlan:
    generator = torch.Generator().manual_seed(seed)
    gates = draw_gates(n_images, settings, generator, "cpu")
    factors = draw_jitter_factors(n_images, settings, generator, "cpu")
    # Noise is not stored (N*3*H*W floats); a seed regenerates it block by block instead.
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return SplitPlan(gates=gates.numpy(), jitter_factors=factors.numpy().astype(np.float32), noise_seed=noise_seed,
                     settings=replace(settings, fgm_eps=0.0))


def _block_seed(noise_seed: int, block: int) -> int:
    # SeedSequence mixes the pair so neighbouring blocks/seeds don't give correlated streams.
    return int(np.random.SeedSequence([noise_seed, block]).generate_state(1, dtype=np.uint64)[0])


def _noise_block(noise_seed: int, block: int, image_shape, settings: PerturbSettings) -> Tensor:
    generator = torch.Generator().manual_seed(_block_seed(noise_seed, block))
    return draw_noise((NOISE_BLOCK, *image_shape), settings, generator, "cpu")


def plan_noise(plan: SplitPlan, start: int, stop: int, image_shape) -> Tensor:
    """Noise for images [start, stop) on CPU; image i's noise depends only on (noise_seed, i)."""
    first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
    blocks = [_noise_block(plan.noise_seed, b, image_shape, plan.settings) for b in range(first, last + 1)]
    offset = first * NOISE_BLOCK
    return torch.cat(blocks)[start - offset : stop - offset]


def plan_draw(plan: SplitPlan, start: int, stop: int, image_shape, device) -> PerturbDraw:
    """The draw for images [start, stop), independent of how the caller batches the split."""
    if not 0 <= start < stop <= len(plan.gates):
        raise ValueError(f"bad range [{start}, {stop}) for a plan of {len(plan.gates)} images")
    gates = torch.from_numpy(plan.gates[start:stop]).to(device)
    factors = torch.from_numpy(plan.jitter_factors[start:stop]).to(device)
    noise = plan_noise(plan, start, stop, image_shape).to(device)
    return PerturbDraw(gates=gates, jitter_factors=factors, noise=noise)


# what a plan records of its settings: each field, and its key under `perturb` in params.yaml
_PLAN_SETTINGS = {"p": "p", "brightness": "jitter.brightness", "contrast": "jitter.contrast",
                  "saturation": "jitter.saturation", "noise_std": "noise.std", "noise_fraction": "noise.fraction"}


PLAN_SEED = "seed"   # in the plan's file: the `seeds.plan` it was drawn with


def save_plans(plans: dict[str, SplitPlan], path: str | PathLike, seed: int) -> None:
    """One reproducible .npz (same plans, same bytes), readable with allow_pickle=False; `seed`: the plans' `seeds.plan`."""
    arrays = {PLAN_SEED: np.asarray(seed, dtype=np.int64)}
    for name, plan in plans.items():
        arrays[f"{name}.gates"] = np.asarray(plan.gates, dtype=bool)
        arrays[f"{name}.jitter_factors"] = np.asarray(plan.jitter_factors, dtype=np.float32)
        arrays[f"{name}.noise_seed"] = np.asarray(plan.noise_seed, dtype=np.int64)
        for field in _PLAN_SETTINGS:
            arrays[f"{name}.{field}"] = np.asarray(getattr(plan.settings, field), dtype=np.float64)
    save_npz(path, arrays)


def plan_schema() -> dict[str, Array]:
    """Every array save_plans writes, per split: gates (an image's kinds), jitter factors (brightness,
    contrast, saturation), the noise seed and the settings the plan was drawn with; and `seeds.plan`."""
    schema = {PLAN_SEED: Array("iu", ())}
    for split in SPLITS:
        images = f"{split} images"
        schema.update({f"{split}.gates": Array("b", (images, "kinds")),
                       f"{split}.jitter_factors": Array("f", (images, "jitter factors")),
                       f"{split}.noise_seed": Array("iu", ())})
        schema.update({f"{split}.{field}": Array("f", ()) for field in _PLAN_SETTINGS})
    return schema


def load_plans(path: str | PathLike, images: dict[str, int] | None = None,
               drawn_with: tuple[int, PerturbSettings] | None = None) -> dict[str, SplitPlan]:
    """The plan of every split, checked against plan_schema (and each split's image count in `images`, and the
    `seeds.plan` and settings in `drawn_with`, where given: a plan of other params is well-formed, and was applied
    without a word): a one-line InputError naming the stage that remakes it otherwise."""
    arrays = load_npz(path, produced_by="perturb")
    known = {"kinds": (len(KINDS), "the perturbation kinds"), "jitter factors": (3, "the colour jitter")}
    known.update({f"{split} images": (count, "the split") for split, count in (images or {}).items()})
    check_arrays(arrays, plan_schema(), path, "perturb", known)
    plans = {
        split: SplitPlan(gates=arrays[f"{split}.gates"], jitter_factors=arrays[f"{split}.jitter_factors"],
                         noise_seed=int(arrays[f"{split}.noise_seed"]),
                         settings=PerturbSettings(**{field: float(arrays[f"{split}.{field}"]) for field in _PLAN_SETTINGS},
                                                  fgm_eps=0.0))
        for split in SPLITS
    }
    if drawn_with is not None:
        seed, settings = drawn_with
        drawn = {"seeds.plan": (int(arrays[PLAN_SEED]), seed)}
        drawn.update({f"perturb.{key}": (getattr(plan.settings, field), getattr(settings, field))
                      for plan in plans.values() for field, key in _PLAN_SETTINGS.items()})
        other = [f"{key} {held:g}, not {wanted:g}" for key, (held, wanted) in drawn.items() if held != wanted]
        if other:
            raise refuse(path, "perturb", f"drawn with other params than params.yaml's: {'; '.join(other)}")
    return plans
