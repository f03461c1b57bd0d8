"""Robust accuracy of one trained model on the test set: an eps sweep of FGM and PGD against its own
decision, and attacks aimed at its 3-NN decision, reduced to a per-image worst case.

Why several attacks: single-step attacks overstate robustness, and defences built on a k-NN over
embeddings have looked robust under surrogate attacks and collapsed under adaptive ones. So:

- the sweep: FGM and PGD at every eps of `attack.eps` (in 1/255), against the decision each model
  is trained to be attacked through (its head, or the soft nearest-class score of a head-less
  model), with the head and the 3-NN both scored on the same adversarial images;
- at the study's eps, attacks on the 3-NN decision itself: PGD on a soft k-NN surrogate over the
  real training embeddings at several temperatures, the guide-sample feature attack (Sitawarin &
  Wagner), and transfer from the baseline's head (PGD against the baseline of the same seed);
- robust accuracy: a head's is the per-image worst of FGM and PGD; a 3-NN's is the per-image worst
  of every attack above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from robust_cifar.attacks import DEFAULT_SOFT_KNN_K, fgm, guide_sample_attack, pgd, soft_knn_score, worst_case
from robust_cifar.compute import Compute
from robust_cifar.knn import knn_predict
from robust_cifar.params import Params, Rule, bounded_int, bounded_real, real

EPS_SWEEP = Rule(lambda v: isinstance(v, list) and 0 < len(v) <= 20 and all(
    isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e <= 255 for e in v) and v == sorted(set(v)),
    "an increasing list of 1 to 20 distinct numbers in [0, 255] (units of 1/255)")
TEMPERATURES = Rule(lambda v: isinstance(v, list) and 0 < len(v) <= 10 and all(
    isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 100 for t in v),
    "a list of 1 to 10 numbers in (0, 100]")


@dataclass(frozen=True)
class AttackConfig:
    eps: tuple[float, ...]          # the sweep, in units of 1/255
    pgd_steps: int
    pgd_step_scale: float           # each PGD step moves step_scale * eps / steps (Madry et al.: 2.5)
    pgd_restarts: int
    knn_temperatures: tuple[float, ...]
    test_images: int                # 0 = the whole test set
    study_eps: float                # pixel units: perturb.fgm.eps, where robust accuracy is reported

    @classmethod
    def from_params(cls, params: Params) -> "AttackConfig":
        return cls(eps=tuple(float(e) for e in params.value("attack.eps", EPS_SWEEP)),
                   pgd_steps=params.value("attack.pgd_steps", bounded_int(1, 1_000, "the sweep uses 10")),
                   pgd_step_scale=params.value("attack.pgd_step_scale", bounded_real(0, 10, "Madry et al. use 2.5",
                                                                                     open_low=True)),
                   pgd_restarts=params.value("attack.pgd_restarts", bounded_int(1, 100, "random restarts")),
                   knn_temperatures=tuple(float(t) for t in params.value("attack.knn_temperatures", TEMPERATURES)),
                   test_images=params.value("attack.test_images", bounded_int(0, 10_000_000, "0 = all")),
                   study_eps=params.value("perturb.fgm.eps", real(lambda v: 0 <= v <= 1, "a number in [0, 1] (pixel units)")))

    def step_size(self, eps: float) -> float:
        return self.pgd_step_scale * eps / self.pgd_steps


def eps_key(eps_255: float) -> str:
    """A metrics key for an eps in 1/255 ('eps_6p4'): DVC and this project flatten keys on dots."""
    return f"eps_{eps_255:g}".replace(".", "p")


Attack = Callable[[Tensor, int, int], Tensor]   # (images, start, stop) -> adversarial images


def batched(images: Tensor, batch_size: int, attack: Attack, compute: Compute) -> Tensor:
    """An attack applied batch by batch (pixels as float in [0, 1]), results on the device."""
    out = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        x = compute.images(images[start:stop])
        with compute.autocast():
            out.append(attack(x, start, stop).float())
    return torch.cat(out)


@dataclass
class Decisions:
    """What a model predicts for adversarial images: its head (if it decides by one) and its 3-NN."""
    model: torch.nn.Module
    fit: Tensor
    fit_labels: Tensor
    k: int
    has_head: bool

    def correct(self, images: Tensor, labels: Tensor, batch_size: int) -> dict[str, Tensor]:
        embeddings, logits = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                e, l = self.model.embed_and_classify(images[start:start + batch_size])
                embeddings.append(e.float())
                logits.append(l.float())
        result = {"knn": knn_predict(self.fit, self.fit_labels, torch.cat(embeddings), self.k) == labels}
        if self.has_head:
            result["head"] = torch.cat(logits).argmax(1) == labels
        return result


def robust_accuracy(config: AttackConfig, decisions: Decisions, score_fn, transfer_score_fn: Optional[Callable],
                    test_images: Tensor, test_labels: Tensor, compute: Compute, batch_size: int, seed: int,
                    progress: Callable[[str], None] = lambda message: None) -> dict:
    """The sweep, the 3-NN attacks at the study's eps, and the per-image worst cases, as accuracies."""
    generator = torch.Generator(device=compute.device).manual_seed(seed)
    model, labels = decisions.model, test_labels

    def accuracies(correct: dict[str, Tensor]) -> dict[str, float]:
        return {decision: round(value.float().mean().item(), 6) for decision, value in correct.items()}

    def own_decision_attacks(eps: float) -> dict[str, Attack]:
        return {"fgm": lambda x, a, b: fgm(score_fn, x, eps),
                "pgd": lambda x, a, b: pgd(score_fn, x, eps, config.pgd_steps, config.step_size(eps),
                                           config.pgd_restarts, generator)}

    sweep: dict = {"fgm": {}, "pgd": {}}
    at_study: dict[str, dict[str, Tensor]] = {}
    for eps_255 in config.eps:
        eps = eps_255 / 255
        progress(f"eps {eps_255:g}/255")
        for name, attack in own_decision_attacks(eps).items():
            correct = decisions.correct(batched(test_images, batch_size, attack, compute), labels, batch_size)
            sweep[name][eps_key(eps_255)] = accuracies(correct)
            if abs(eps - config.study_eps) < 1e-9:
                at_study.update({f"{name}.{decision}": value for decision, value in correct.items()})

    eps = config.study_eps
    if not at_study:   # the study's eps is not one of the sweep's: attack there too
        for name, attack in own_decision_attacks(eps).items():
            correct = decisions.correct(batched(test_images, batch_size, attack, compute), labels, batch_size)
            at_study.update({f"{name}.{decision}": value for decision, value in correct.items()})

    knn_attacks: dict[str, Tensor] = {"pgd_own_decision": at_study["pgd.knn"], "fgm_own_decision": at_study["fgm.knn"]}
    for temperature in config.knn_temperatures:
        progress(f"soft k-NN PGD, temperature {temperature:g}")
        surrogate = soft_knn_score(model, decisions.fit, decisions.fit_labels, decisions.fit_labels.max().item() + 1,
                                   temperature, k=min(DEFAULT_SOFT_KNN_K, len(decisions.fit)))
        adversarial = batched(test_images, batch_size, lambda x, a, b: pgd(
            surrogate, x, eps, config.pgd_steps, config.step_size(eps), config.pgd_restarts, generator), compute)
        knn_attacks[f"soft_knn_t{temperature:g}".replace(".", "p")] = decisions.correct(adversarial, labels, batch_size)["knn"]
    progress("guide-sample attack")
    # as many guides as the vote has neighbours, unless a class has fewer training images than that
    guides = min(decisions.k, int(torch.bincount(decisions.fit_labels).min()))
    adversarial = batched(test_images, batch_size, lambda x, a, b: guide_sample_attack(
        model, x, decisions.fit, decisions.fit_labels, eps, config.pgd_steps, config.step_size(eps), guides,
        generator), compute)
    knn_attacks["guide_samples"] = decisions.correct(adversarial, labels, batch_size)["knn"]
    transfer_correct = None
    if transfer_score_fn is not None:
        progress("transfer from the baseline's head")
        adversarial = batched(test_images, batch_size, lambda x, a, b: pgd(
            transfer_score_fn, x, eps, config.pgd_steps, config.step_size(eps), config.pgd_restarts, generator), compute)
        transfer_correct = decisions.correct(adversarial, labels, batch_size)
        knn_attacks["transfer_from_baseline"] = transfer_correct["knn"]

    robust = {"knn": worst_case(knn_attacks)}
    attacks_at_study = {"knn": accuracies(knn_attacks)}
    if decisions.has_head:
        head_attacks = {"fgm": at_study["fgm.head"], "pgd": at_study["pgd.head"]}
        robust["head"] = worst_case(head_attacks)
        attacks_at_study["head"] = accuracies({**head_attacks, **(
            {"transfer_from_baseline": transfer_correct["head"]} if transfer_correct is not None else {})})
    return {"sweep": sweep, "at_study_eps": attacks_at_study, "robust": accuracies(robust),
            "test_images": len(test_labels)}
