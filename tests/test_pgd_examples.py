"""PGD training examples (Madry et al. 2018) against a naive loop, and the method that trains on them: its own params."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from robust_cifar.check_params import validate_params
from robust_cifar.errors import ParamsError
from robust_cifar.params import Params, set_dotted
from robust_cifar.training.methods.registry import build_method
from robust_cifar.training.methods.pgd_examples import PgdExamples
from tests.methods import PGD_HEAD as NAME

RAW = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
EPS, STEPS = 8 / 255, 3


def linear_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10)).double()


def images_and_labels(n: int = 6):
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=generator, dtype=torch.float64), torch.arange(n) % 10


def naive_pgd(model, x, labels, eps, steps, step_size, start_noise):
    """Madry et al.'s PGD one image at a time, a plain loop: start, then step, project, clip."""
    out = []
    for image, label, noise in zip(x, labels, start_noise):
        adv = torch.clamp(image + (2 * noise - 1) * eps, image - eps, image + eps).clamp(0, 1)
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            loss = F.cross_entropy(model(adv[None]), label[None])
            (grad,) = torch.autograd.grad(loss, adv)
            adv = torch.min(torch.max(adv.detach() + step_size * grad.sign(), image - eps), image + eps).clamp(0, 1)
        out.append(adv)
    return torch.stack(out)


def test_the_training_examples_are_madrys_pgd():
    model, (x, labels) = linear_model(), images_and_labels()
    examples = PgdExamples(eps=EPS, steps=STEPS)
    generator = torch.Generator().manual_seed(5)
    start_noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    ours = examples.batch(x, labels, model, generator, fixed_shape=False)
    theirs = naive_pgd(model, x, labels, EPS, STEPS, 2.5 * EPS / STEPS, start_noise)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert (ours - x).abs().max() <= EPS + 1e-12 and ours.min() >= 0 and ours.max() <= 1
    assert F.cross_entropy(model(ours), labels) > F.cross_entropy(model(x), labels)   # it attacks


def test_every_validation_sees_the_same_random_starts():
    """The perturbed validation curve compares like with like: each epoch's run over the split (batch by
    batch, in order) draws the same starts, so the same model gives the same images."""
    model, (x, labels) = linear_model(), images_and_labels()
    with_score = PgdExamples(eps=EPS, steps=STEPS).validation(labels, tuple(x.shape[1:]), torch.Generator().manual_seed(2))

    def one_validation():
        transform = with_score(model)
        return torch.cat([transform(x[:3], 0, 3), transform(x[3:], 3, 6)])
    first = one_validation()
    torch.testing.assert_close(one_validation(), first, rtol=0, atol=0)
    assert not torch.equal(first, x) and (first - x).abs().max() <= EPS + 1e-12


def test_the_method_trains_on_its_own_eps_not_the_evaluations():
    """So `dvc exp run -S perturb.fgm.eps_255=...` (the evaluation) retrains nothing: train depends on this
    method's section, not on perturb."""
    method = build_method(NAME, Params(copy.deepcopy(RAW)))
    edited = copy.deepcopy(RAW)
    set_dotted(edited, "perturb.fgm.eps_255", 2.0)
    assert build_method(NAME, Params(edited)) == method
    set_dotted(edited, f"{NAME}.eps_255", 2.0)
    assert build_method(NAME, Params(edited)).training_perturbation == PgdExamples(eps=2 / 255, steps=RAW[NAME]["steps"])
    assert method.has_head and method.training_perturbation.step_size == pytest.approx(2.5 * method.training_perturbation.eps / RAW[NAME]["steps"])


@pytest.mark.parametrize("key, value, words", [("steps", 0, "steps"), ("eps_255", -1, "eps_255"),
                                               ("steps", 2.5, "steps")])
def test_a_bad_value_is_one_line_naming_the_key(key, value, words):
    edited = copy.deepcopy(RAW)
    set_dotted(edited, f"{NAME}.{key}", value)
    with pytest.raises(ParamsError) as error:
        validate_params(Params(edited))
    assert f"{NAME}.{words}" in str(error.value) and "\n" not in str(error.value)
