"""Robust accuracy of one trained model: every registered attack, true labels, fp32, per image, cumulative in eps.

The definition (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; RobustBench): an
image is robust at eps when the decision is right on the clean image AND on every adversarial
image that any attack found at any eps' <= eps (an adversarial image found in a smaller ball lies
in every larger one), each attack aiming away from the TRUE label. So, by construction, robust
accuracy is never above clean accuracy, never above any single attack's accuracy, and never
rises with eps. Per decision: the model's head (if it has one) and the 3-NN on its embedding are
both scored on every adversarial image, whichever decision the attack aimed at.

Each attack's own accuracy at each eps it ran at (clean-correct AND correct on its adversarial
images) is reported beside the cumulative curve: the sanity gates compare those
(``robust_cifar.reporting.summarize``), since cumulative numbers pass them trivially. With ``attack.cascade``
(AutoAttack's protocol) each attack runs only on the images that every earlier attack (registry
order, eps ascending) left right: the same robust accuracy up to the attacks' random starts, at a
fraction of the cost where few images survive, but no attack's own accuracy; the report then says
what share of the images each attack was the first to break.

Everything runs in float32 without autocast: a bf16 gradient or decision would be another model.
Which attacks run, with which settings, is ``robust_cifar.evaluation.attack_registry`` and params.yaml
``attack``; an attack returns candidate adversarial images (one per restart, temperature or
target), and an image survives the attack only if every candidate leaves the decision right.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from robust_cifar.compute import Compute
from robust_cifar.conditions import decision_labels
from robust_cifar.errors import ParamsError
from robust_cifar.evaluation.apgd import APGDResult, apgd, cross_entropy, dlr, target_classes, targeted_dlr
from robust_cifar.evaluation.attack_registry import ATTACKS, TRANSFER, PlannedAttack, eps_key, planned_attacks
from robust_cifar.evaluation.attacks import ScoreFn, fgm_step, guide_sample_attack, soft_knn_score
from robust_cifar.evaluation.knn import knn_predict
from robust_cifar.params import BOOLEAN, Params, Rule, bounded_int
from robust_cifar.perturbations.perturb import study_eps_255
from robust_cifar.perturbations.pgd import pgd

EPS_SWEEP = Rule(lambda v: isinstance(v, list) and 0 < len(v) <= 20 and all(
    isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e <= 255 for e in v) and v == sorted(set(v)),
    "an increasing list of 1 to 20 distinct numbers in [0, 255] (units of 1/255)")


@dataclass(frozen=True)
class RobustnessConfig:
    eps_255: tuple[float, ...]       # the sweep, in 1/255, increasing; holds the study's eps
    study_eps_255: float             # perturb.fgm.eps_255: where robust accuracy is reported
    test_images: int                 # 0 = the whole test set
    attacks: tuple[PlannedAttack, ...]
    cascade: bool = False            # each attack only on the images every earlier one left right

    @classmethod
    def from_params(cls, params: Params) -> "RobustnessConfig":
        sweep = params.value("attack.eps_255", EPS_SWEEP)
        study = study_eps_255(params)
        if study not in sweep:
            raise ParamsError(f"{params.source}: `attack.eps_255` = {sweep} does not contain the study's eps "
                              f"`perturb.fgm.eps_255` = {study:g}: every sweep must hold it exactly, so robust "
                              f"accuracy is reported at the study's eps; {params.fix_hint('attack.eps_255')}")
        attacks = tuple(planned_attacks(params))
        aiming = [name for name, spec in ATTACKS.items() if spec.aims_at != TRANSFER]
        if not any(attack.name in aiming for attack in attacks):
            # robust accuracy would be clean accuracy, vouched for by no attack (transfer never attacks the reference)
            problem = ("only `transfer` runs, and it never attacks the reference method's model" if attacks
                       else "every attack is `at: never`")
            raise ParamsError(f"{params.source}: {problem}: robust accuracy would be clean accuracy, measured by no "
                              f"attack; set `at: study` (or `sweep`) for one of {', '.join(aiming)} "
                              + ("in params.yaml" if not any(key.startswith("attack.") for key in params.overridden)
                                 else f"({params.fix_hint('attack')})"))
        return cls(eps_255=tuple(float(e) for e in sweep), study_eps_255=float(study),
                   test_images=params.value("attack.test_images", bounded_int(0, 10_000_000, "0 = all")),
                   attacks=attacks, cascade=params.value("attack.cascade", BOOLEAN))

    def attacks_at(self, eps_255: float) -> list[PlannedAttack]:
        """The attacks that run at this eps: none at 0 (robust = clean there)."""
        if eps_255 == 0:
            return []
        return [attack for attack in self.attacks if attack.at == "sweep" or eps_255 == self.study_eps_255]


@dataclass(frozen=True)
class Victim:
    """The model under attack and how it decides: its head (if it has one) and a k-NN on its embedding."""
    model: torch.nn.Module
    score: ScoreFn                   # its own differentiable decision: the head, or a soft nearest-class score
    has_head: bool
    fit: Tensor                      # the clean training embeddings and labels the k-NN votes with
    fit_labels: Tensor
    k: int
    num_classes: int
    transfer_source: Optional[ScoreFn] = None   # the reference method's head (None: this model is it)

    @property
    def decisions(self) -> list[str]:
        return ["head", "knn"] if self.has_head else ["knn"]

    def correct(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Per decision, bool (B,): right on these images (float32)."""
        with torch.no_grad():
            embeddings, logits = self.model.embed_and_classify(images)
        result = {"head": logits.float().argmax(1) == labels} if self.has_head else {}
        result["knn"] = knn_predict(self.fit, self.fit_labels, embeddings.float(), self.k) == labels
        return result


# ---------------------------------------------------------------------------------------------
# How each registered attack runs: settings, victim, images, true labels, eps (pixels), generator
# -> candidate adversarial images
# ---------------------------------------------------------------------------------------------

Run = Callable[[dict, Victim, Tensor, Tensor, float, torch.Generator], Iterator[Tensor]]


def step_size(settings: dict, eps: float) -> float:
    return settings["step_scale"] * eps / settings["steps"]


def apgd_candidates(result: APGDResult) -> Iterator[Tensor]:
    # the iterate that fooled the attacked score, and the highest-loss one: the other decision
    # (the 3-NN of a model attacked through its head) may fall to either
    yield result.fooling_images
    yield result.best_loss_images


def run_fgm(settings, victim, x, y, eps, generator):
    yield fgm_step(victim.score, x, y, eps)


def run_pgd(settings, victim, x, y, eps, generator):
    for _ in range(settings["restarts"]):
        yield pgd(victim.score, x, y, eps, settings["steps"], step_size(settings, eps), generator)


def run_apgd_ce(settings, victim, x, y, eps, generator):
    yield from apgd_candidates(apgd(victim.score, x, y, eps, settings["iterations"], cross_entropy, generator))


def run_apgd_dlr(settings, victim, x, y, eps, generator):
    yield from apgd_candidates(apgd(victim.score, x, y, eps, settings["iterations"], dlr, generator))


def run_apgd_t(settings, victim, x, y, eps, generator):
    """Each target class in turn, on the images the score still gets right (as AutoAttack)."""
    unbroken = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for target in target_classes(victim.score, x, y, settings["targets"]):
        rows = unbroken.nonzero().squeeze(1)
        if len(rows) == 0:
            return
        result = apgd(victim.score, x[rows], y[rows], eps, settings["iterations"], targeted_dlr(target[rows]), generator)
        for images in apgd_candidates(result):
            yield x.index_copy(0, rows, images)   # rows already broken keep their clean image
        unbroken[rows[result.fooled]] = False


def soft_knn(victim: Victim, temperature: float) -> ScoreFn:
    return soft_knn_score(victim.model, victim.fit, victim.fit_labels, victim.num_classes, temperature)


def run_soft_knn_pgd(settings, victim, x, y, eps, generator):
    for temperature in settings["temperatures"]:
        yield pgd(soft_knn(victim, temperature), x, y, eps, settings["steps"], step_size(settings, eps), generator)


def run_soft_knn_apgd_ce(settings, victim, x, y, eps, generator):
    for temperature in settings["temperatures"]:
        yield from apgd_candidates(apgd(soft_knn(victim, temperature), x, y, eps, settings["iterations"],
                                        cross_entropy, generator))


def run_soft_knn_apgd_dlr(settings, victim, x, y, eps, generator):
    for temperature in settings["temperatures"]:
        yield from apgd_candidates(apgd(soft_knn(victim, temperature), x, y, eps, settings["iterations"], dlr,
                                        generator))


def run_guide_samples(settings, victim, x, y, eps, generator):
    # as many guides as the vote has neighbours, unless a class has fewer training images than that
    guides = min(victim.k, int(torch.bincount(victim.fit_labels).min()))
    yield guide_sample_attack(victim.model, x, y, victim.fit, victim.fit_labels, eps, settings["steps"],
                              step_size(settings, eps), guides, generator)


def run_transfer(settings, victim, x, y, eps, generator):
    yield pgd(victim.transfer_source, x, y, eps, settings["steps"], step_size(settings, eps), generator)


RUNS: dict[str, Run] = {"fgm": run_fgm, "pgd": run_pgd, "apgd_ce": run_apgd_ce, "apgd_dlr": run_apgd_dlr,
                        "apgd_t": run_apgd_t, "soft_knn_pgd": run_soft_knn_pgd,
                        "soft_knn_apgd_ce": run_soft_knn_apgd_ce, "soft_knn_apgd_dlr": run_soft_knn_apgd_dlr,
                        "guide_samples": run_guide_samples, "transfer": run_transfer}
if RUNS.keys() != ATTACKS.keys():
    raise ImportError(f"robustness.RUNS {sorted(RUNS)} and attack_registry.ATTACKS {sorted(ATTACKS)} "
                      "must name the same attacks")


def applies(name: str, victim: Victim) -> bool:
    """A transfer attack needs a source other than the victim itself."""
    return ATTACKS[name].aims_at != TRANSFER or victim.transfer_source is not None


def attack_seed(seed: int, name: str, eps_255: float) -> int:
    """Each attack and eps draws from its own stream: adding or switching off one attack changes no
    other attack's random starts."""
    return (seed * 1_000_003 + zlib.crc32(f"{name}@{eps_255:g}".encode())) % 2**63


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------


def accuracies(correct: dict[str, Tensor]) -> dict[str, float]:
    return {decision: round(value.float().mean().item(), 6) for decision, value in correct.items()}


def robust_accuracy(config: RobustnessConfig, victim: Victim, images: Tensor, labels: Tensor, compute: Compute,
                    batch_size: int, seed: int, progress: Callable[[str], None] = lambda message: None,
                    ) -> tuple[dict, dict[str, Tensor]]:
    """(report, per image) for uint8 test ``images`` (N, 3, H, W) and their true ``labels``.

    The report: ``clean`` and ``robust`` (at the study's eps) accuracy per decision, the cumulative
    ``curve`` per eps, and either ``attacks``: each attack's own accuracy per eps it ran at, or, in a
    cascade, ``broken``: per eps it ran at, the share of the images this attack was the first to break,
    at that eps or a smaller one (so robust accuracy at eps = clean minus, over attacks, each one's
    latest entry up to eps). Per image:
    ``clean.<decision>`` and ``robust.<decision>`` (at the study's eps) as bool tensors.
    Only images some decision gets right on the clean input are attacked (in a cascade: still gets
    right under every earlier attack): the others are not robust whatever an attack does.
    """
    if compute.mixed_precision:
        raise ValueError("robust accuracy is measured in float32: pass a Compute without mixed precision")
    labels = labels.to(compute.device)
    batches = lambda rows: [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]
    pixels = lambda rows: compute.images(images[rows])
    standing = lambda right: torch.stack(list(right.values())).any(dim=0).nonzero().squeeze(1)
    everything = torch.arange(len(labels), device=compute.device)

    clean: dict[str, Tensor] = {}
    for rows in batches(everything):
        for decision, ok in victim.correct(pixels(rows), labels[rows]).items():
            clean.setdefault(decision, torch.zeros(len(labels), dtype=torch.bool, device=compute.device))[rows] = ok
    attacked = standing(clean)
    progress(f"clean {percentages(accuracies(clean), victim.k)} on {len(labels)} images; {len(attacked)} attacked"
             + (" (a cascade: each attack on what the earlier ones left)" if config.cascade else ""))

    robust = {decision: ok.clone() for decision, ok in clean.items()}
    per_attack = {attack.name: {} for attack in config.attacks if applies(attack.name, victim)}   # registry order
    first_broken = {name: {decision: torch.zeros_like(ok) for decision, ok in clean.items()} for name in per_attack}
    curve, at_study = {}, None
    for eps_255 in config.eps_255:
        for attack in config.attacks_at(eps_255):
            if not applies(attack.name, victim):
                continue
            started = time.perf_counter()
            generator = torch.Generator(device=compute.device).manual_seed(attack_seed(seed, attack.name, eps_255))
            before = robust if config.cascade else clean
            targets = standing(robust) if config.cascade else attacked
            survived = {decision: ok.clone() for decision, ok in before.items()}
            for rows in batches(targets):
                x, y = pixels(rows), labels[rows]
                for candidate in RUNS[attack.name](attack.settings, victim, x, y, eps_255 / 255, generator):
                    for decision, ok in victim.correct(candidate, y).items():
                        survived[decision][rows] &= ok
            if config.cascade:
                for decision in robust:
                    first_broken[attack.name][decision] |= robust[decision] & ~survived[decision]
                outcome = accuracies(first_broken[attack.name])
                said = f"first broke {percentages(outcome, victim.k)} of {len(labels)} images so far ({len(targets)} attacked)"
            else:
                outcome = accuracies(survived)
                said = percentages(outcome, victim.k)
            per_attack[attack.name][eps_key(eps_255)] = outcome
            for decision in robust:
                robust[decision] &= survived[decision]
            progress(f"eps {eps_255:g}/255, {attack.name}: {said} ({time.perf_counter() - started:.1f} s)")
        curve[eps_key(eps_255)] = accuracies(robust)
        if eps_255 == config.study_eps_255:
            at_study = {decision: ok.clone() for decision, ok in robust.items()}
    report = {"test_images": len(labels), "study_eps_255": config.study_eps_255, "clean": accuracies(clean),
              "robust": accuracies(at_study), "curve": curve,
              "broken" if config.cascade else "attacks": {name: points for name, points in per_attack.items() if points}}
    per_image = {**{f"clean.{d}": ok for d, ok in clean.items()}, **{f"robust.{d}": ok for d, ok in at_study.items()}}
    return report, per_image


def percentages(values: dict[str, float], k: int) -> str:
    """'head 41.0%, 3-NN 38.5%': accuracy per decision, the k-NN named by its k."""
    labels = decision_labels(k)
    return ", ".join(f"{labels[decision]} {100 * value:.1f}%" for decision, value in values.items())
