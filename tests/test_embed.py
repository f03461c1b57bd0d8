"""The embed library (robust_cifar/evaluation/embed.py): each condition against the same thing done by hand."""
import numpy as np
import pytest
import torch

from robust_cifar.compute import Compute
from robust_cifar.conditions import KINDS, conditions_for
from robust_cifar.evaluation.embed import evaluate_conditions, flatten
from robust_cifar.evaluation.inference import embed_and_classify
from robust_cifar.model import CifarResNet18
from robust_cifar.perturbations.perturb import PerturbSettings, apply_perturbations, make_plan, plan_draw

N, EPS = 6, 8 / 255
SETTINGS = PerturbSettings(p=0.5)


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model, source = CifarResNet18(width=4).eval(), CifarResNet18(width=4).eval()
    images = torch.randint(0, 256, (N, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return model, source, images, make_plan(N, SETTINGS, seed=3), Compute.create("cpu", fast=False)


def test_every_condition_is_the_plan_applied_then_embedded(setting):
    model, source, images, plan, compute = setting
    conditions = conditions_for("test")
    results = evaluate_conditions(model, images, plan, EPS, model, source, compute, batch_size=4, conditions=conditions)
    assert list(results) == list(conditions)
    clean = embed_and_classify(model, images, compute, N)
    torch.testing.assert_close(results["clean"], clean, rtol=0, atol=1e-6)
    for condition, score_fn, only in [("perturbed", model, None), ("transfer", source, None),
                                      *((kind, model, kind) for kind in KINDS)]:
        # the whole split perturbed at once (the stage batches by 4: a row's perturbation must not care)
        x = images.float() / 255
        draw = plan_draw(plan, 0, N, tuple(x.shape[1:]), x.device)
        perturbed = apply_perturbations(x, draw.only(only) if only else draw, plan.with_fgm(EPS), score_fn=score_fn)
        expected = embed_and_classify(model, images, compute, N, lambda batch, start, stop: perturbed[start:stop])
        torch.testing.assert_close(results[condition], expected, rtol=0, atol=1e-5, msg=condition)
    assert not torch.allclose(results["perturbed"][0], results["clean"][0])   # the plan moves images


def test_the_reference_itself_has_its_white_box_condition_as_transfer(setting):
    model, _, images, plan, compute = setting
    results = evaluate_conditions(model, images, plan, EPS, model, None, compute, 4, ("clean", "perturbed", "transfer"))
    assert results["transfer"] is results["perturbed"]


def test_flatten_names_each_array_and_leaves_out_a_headless_models_logits():
    results = {"clean": (torch.ones(3, 128), torch.zeros(3, 10)), "perturbed": (torch.ones(3, 128) * 2, torch.ones(3, 10))}
    with_head = flatten("val", results, with_logits=True)
    assert sorted(with_head) == ["val.clean.embeddings", "val.clean.logits", "val.perturbed.embeddings", "val.perturbed.logits"]
    assert np.array_equal(with_head["val.perturbed.embeddings"], np.full((3, 128), 2.0, np.float32))
    assert sorted(flatten("val", results, with_logits=False)) == ["val.clean.embeddings", "val.perturbed.embeddings"]
