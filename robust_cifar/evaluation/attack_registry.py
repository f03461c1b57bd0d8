"""The attacks of the robustness stage, registered once by name (as MadryLab/robustness's `STEPS`).

Each entry says what the attack aims at, which settings it reads (params.yaml `attack.<name>`,
beside `at`), and which sanity gates its numbers must pass. The robustness stage, the summary,
its gates and the robustness figure loop over ``ATTACKS``; how each attack runs is
``robust_cifar.evaluation.robustness.RUNS`` (kept apart so the summary needs no torch; a test holds the
two to the same names). Adding an attack: an entry here, its run there, a section in params.yaml,
and its test.

Every attack aims AWAY FROM THE TRUE LABEL, and an image counts as robust at eps only if it is
classified correctly on the clean input and under every attack at every eps up to eps
(``robust_cifar.evaluation.robustness``).

`at`: ``sweep`` runs the attack at every eps of ``attack.eps_255``; ``study`` only at the study's
eps (``perturb.fgm.eps_255``), for an attack whose cost matters; ``never``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from robust_cifar.params import Params, Rule, bounded_int, bounded_real, one_of

# What an attack differentiates, and so which decisions its gates apply to.
SCORE = "score"          # the model's own decision: its head, or (no head) its soft nearest-class-mean score
KNN = "knn"              # the 3-NN decision, through a surrogate or its embedding
TRANSFER = "transfer"    # another model's head: the reference method's of the same seed

# not "off": YAML 1.1 (PyYAML) reads off as false, YAML 1.2 (DVC) as a string
AT = one_of("sweep", "study", "never")
ITERATIONS = bounded_int(1, 10_000, "APGD's paper uses 100")
STEPS = bounded_int(1, 10_000, "gradient steps")
STEP_SCALE = bounded_real(0, 10, "each step moves step_scale * eps / steps; Madry et al. use 2.5", open_low=True)
TEMPERATURES = Rule(lambda v: isinstance(v, list) and 0 < len(v) <= 10 and len(set(v)) == len(v) and all(
    isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 100 for t in v),
    "a list of 1 to 10 distinct numbers in (0, 100] (cosine similarities lie in [-1, 1]; a temperature twice "
    "would run its attack twice)")


@dataclass(frozen=True)
class AttackSpec:
    aims_at: str
    about: str                                   # one line: what it does (summary; docs/robustness.md)
    settings: dict[str, Rule] = field(default_factory=dict)   # its own keys under attack.<name>, beside `at`
    at_most: tuple[str, ...] = ()                # gates: never more accurate than these, on what it aims at
    iterative: bool = True                       # gate: accuracy never rises with eps (a single step may
                                                 # overshoot at a large eps, so it is exempt)
    seeded: bool = True                          # draws from its seed (a random start): another seed, other
                                                 # images (FGM, or PGD from the clean image, draws nothing)

    def aimed_decisions(self, decisions: list[str]) -> list[str]:
        """Of a model's decisions (``head`` if it has one, ``knn``), those this attack aims at directly.
        An attack on a head-less model's soft nearest-class score aims at no decision: the 3-NN is
        only scored on its images."""
        aimed = {SCORE: ["head"], KNN: ["knn"], TRANSFER: ["head", "knn"]}[self.aims_at]
        return [decision for decision in decisions if decision in aimed]


ATTACKS: dict[str, AttackSpec] = {
    "fgm": AttackSpec(SCORE, "one signed-gradient step of size eps (FGSM)", iterative=False, seeded=False),
    "pgd": AttackSpec(SCORE, "PGD from a random start (Madry et al. 2018), one candidate per restart",
                      {"steps": STEPS, "step_scale": STEP_SCALE, "restarts": bounded_int(1, 100, "random restarts")},
                      at_most=("fgm", "transfer")),
    "apgd_ce": AttackSpec(SCORE, "APGD on the cross-entropy (Croce and Hein 2020)", {"iterations": ITERATIONS},
                          at_most=("pgd",)),
    "apgd_dlr": AttackSpec(SCORE, "APGD on the difference of logits ratio (scale-invariant)", {"iterations": ITERATIONS}),
    "apgd_t": AttackSpec(SCORE, "targeted APGD-DLR at each of the top other classes in turn (AutoAttack's APGD-T)",
                         {"iterations": ITERATIONS, "targets": bounded_int(1, 9, "other classes of CIFAR-10")}),
    "soft_knn_pgd": AttackSpec(KNN, "PGD on soft k-NN surrogates (per class logsumexp of cosine / T over all "
                                    "clean training embeddings), one per temperature",
                               {"temperatures": TEMPERATURES, "steps": STEPS, "step_scale": STEP_SCALE}),
    "soft_knn_apgd_ce": AttackSpec(KNN, "APGD-CE on the same soft k-NN surrogates",
                                   {"temperatures": TEMPERATURES, "iterations": ITERATIONS}, at_most=("soft_knn_pgd",)),
    # DLR is scale-invariant: at a small temperature the surrogate's softmax saturates and the
    # cross-entropy's gradient vanishes on confidently right images, DLR's does not
    "soft_knn_apgd_dlr": AttackSpec(KNN, "APGD-DLR on the same soft k-NN surrogates",
                                    {"temperatures": TEMPERATURES, "iterations": ITERATIONS}, at_most=("transfer",)),
    "guide_samples": AttackSpec(KNN, "pulls the embedding towards the nearest other class's training embeddings "
                                     "(Sitawarin and Wagner 2019)", {"steps": STEPS, "step_scale": STEP_SCALE}),
    "transfer": AttackSpec(TRANSFER, "PGD against the reference method's head of the same seed, "
                                     "scored on this model", {"steps": STEPS, "step_scale": STEP_SCALE}),
}


def eps_key(eps_255: float) -> str:
    """A metrics key for an eps in 1/255 ('eps_6p375'): DVC and this project flatten keys on dots."""
    return f"eps_{eps_255:g}".replace(".", "p")


def eps_of(key: str) -> float:
    """'eps_6p375' -> 6.375 (units of 1/255)."""
    return float(key.removeprefix("eps_").replace("p", "."))


@dataclass(frozen=True)
class PlannedAttack:
    name: str
    at: str                  # sweep | study
    settings: dict


def planned_attacks(params: Params) -> list[PlannedAttack]:
    """Every registered attack not set to never, with its settings, in registry order."""
    planned = []
    for name, spec in ATTACKS.items():
        at = params.value(f"attack.{name}.at", AT)
        settings = {key: params.value(f"attack.{name}.{key}", rule) for key, rule in spec.settings.items()}
        if at != "never":
            planned.append(PlannedAttack(name, at, settings))
    return planned


__all__ = ["ATTACKS", "AttackSpec", "KNN", "SCORE", "TRANSFER", "PlannedAttack", "eps_key", "eps_of",
           "planned_attacks"]
