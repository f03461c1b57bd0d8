"""The study's answer in tables and one sentence per method: accuracy as mean +- std over training
seeds, and each method against the baseline as a paired difference with a 95% interval."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tabulate import tabulate

from robust_cifar.conditions import CONDITIONS, KINDS, SPLITS
from robust_cifar.replicates import bootstrap_difference, paired_difference, verdict

DECISIONS = {"head": "head", "knn": "3-NN"}
BASELINE = "baseline"
# Test accuracy (clean, perturbed) reported by the write-up, with the decision rule it used.
WRITE_UP = {"baseline": ("head", 70.93, 46.56), "adversarial": ("head", 68.46, 51.92), "angular": ("knn", 73.23, 52.07)}
NOT_APPLICABLE = "n/a"


def cell(entry: dict | None) -> str:
    """'64.78 +- 0.31' (percent, mean +- std over seeds); the mean alone when there is no spread to show."""
    if entry is None:
        return NOT_APPLICABLE
    mean, std = 100 * entry["mean"], 100 * entry["std"]
    return f"{mean:.2f} +- {std:.2f}" if std > 0 else f"{mean:.2f}"


def lookup(metrics: dict, split: str, condition: str, decision: str) -> dict | None:
    return metrics.get(split, {}).get(condition, {}).get(decision)


def own_decision(metrics: dict) -> str:
    """How the method classifies: its head when it has one, else the 3-NN."""
    return "head" if "head" in metrics["test"]["clean"] else "knn"


def headline_rows(all_metrics: dict[str, dict], with_write_up: bool = True) -> list[dict]:
    """Test accuracy (%) clean / perturbed / transfer and the clean->perturbed drop, per decision rule;
    the write-up's numbers beside them only where the settings are comparable."""
    rows = []
    for method, metrics in all_metrics.items():
        row = {"method": method, "seeds": metrics.get("seeds", 0)}
        for decision, label in DECISIONS.items():
            values = {c: lookup(metrics, "test", c, decision) for c in CONDITIONS}
            for condition in CONDITIONS:
                row[f"{label} {condition}"] = cell(values[condition])
            row[f"{label} drop"] = (NOT_APPLICABLE if values["clean"] is None else
                                    f"{100 * (values['clean']['mean'] - values['perturbed']['mean']):.2f}")
        if with_write_up:
            decision, clean, perturbed = WRITE_UP.get(method, (None, None, None))
            row["write-up clean / perturbed"] = f"{clean} / {perturbed} ({DECISIONS[decision]})" if decision else ""
        rows.append(row)
    return rows


def single_perturbation_rows(all_metrics: dict[str, dict]) -> list[dict]:
    """Test accuracy (%) with each perturbation applied alone to every image."""
    return [{"method": method, "decision": label,
             **{f"{kind} only": cell(lookup(metrics, "test", kind, decision)) for kind in KINDS}}
            for method, metrics in all_metrics.items() for decision, label in DECISIONS.items()
            if lookup(metrics, "test", "clean", decision) is not None]


def all_split_rows(all_metrics: dict[str, dict]) -> list[dict]:
    return [{"method": method, "decision": label,
             **{f"{split} {condition}": cell(lookup(metrics, split, condition, decision))
                for split in SPLITS for condition in CONDITIONS}}
            for method, metrics in all_metrics.items() for decision, label in DECISIONS.items()
            if lookup(metrics, "test", "clean", decision) is not None]


# A sanity gate tolerates this much (accuracy, as a fraction) before it calls a result suspect:
# PGD and FGM on a finite test set differ by sampling noise of about a point where both are weak.
GATE_TOLERANCE = 0.005
BREAK_EPS = 32          # in 1/255: by here an attack that works leaves at most BREAK_ACCURACY
BREAK_ACCURACY = 0.10


def eps_of(key: str) -> float:
    """'eps_6p4' -> 6.4 (units of 1/255)."""
    return float(key.removeprefix("eps_").replace("p", "."))


def sweep_curve(metrics: dict, attack: str, decision: str) -> list[tuple[float, dict]]:
    """[(eps in 1/255, {"mean", "std"})] of one attack and decision, in increasing eps."""
    points = metrics.get("robustness", {}).get("sweep", {}).get(attack, {})
    return sorted((eps_of(key), entry[decision]) for key, entry in points.items() if decision in entry)


def gate_failures(metrics: dict) -> list[str]:
    """The sanity checks of Carlini et al. 2019 ("On Evaluating Adversarial Robustness") that these
    robustness numbers fail, in words; an empty list when all pass."""
    failures = []
    for decision, label in DECISIONS.items():
        fgm, pgd = sweep_curve(metrics, "fgm", decision), sweep_curve(metrics, "pgd", decision)
        if not pgd:
            continue
        weaker = [eps for (eps, p), (_, f) in zip(pgd, fgm) if p["mean"] > f["mean"] + GATE_TOLERANCE]
        if weaker:
            failures.append(f"{label}: PGD is weaker than FGM at eps {', '.join(f'{e:g}' for e in weaker)}/255")
        for name, curve in (("FGM", fgm), ("PGD", pgd)):
            rises = [eps for (_, a), (eps, b) in zip(curve, curve[1:]) if b["mean"] > a["mean"] + GATE_TOLERANCE]
            if rises:
                failures.append(f"{label}: {name} accuracy rises with eps at {', '.join(f'{e:g}' for e in rises)}/255")
        strongest = [(eps, p) for eps, p in pgd if eps >= BREAK_EPS]
        if strongest and strongest[-1][1]["mean"] > BREAK_ACCURACY:
            failures.append(f"{label}: {100 * strongest[-1][1]['mean']:.1f}% survive PGD at eps {strongest[-1][0]:g}/255 "
                            f"(expected at most {100 * BREAK_ACCURACY:.0f}%)")
        attacks = metrics.get("robustness", {}).get("at_study_eps", {}).get(decision, {})
        white_box = attacks.get("pgd" if decision == "head" else "pgd_own_decision")
        transfer = attacks.get("transfer_from_baseline")
        if white_box and transfer and white_box["mean"] > transfer["mean"] + GATE_TOLERANCE:
            failures.append(f"{label}: the white-box attack is weaker than transfer from the baseline")
    return failures


def robust_rows(all_metrics: dict[str, dict]) -> list[dict]:
    """Robust test accuracy (%) at the study's eps: worst case per image over every attack."""
    rows = []
    for method, metrics in all_metrics.items():
        robust = metrics.get("robustness", {})
        for decision, label in DECISIONS.items():
            if decision not in robust.get("robust", {}):
                continue
            row = {"method": method, "decision": label, "robust (worst case)": cell(robust["robust"][decision])}
            row.update({attack: cell(entry) for attack, entry in robust.get("at_study_eps", {}).get(decision, {}).items()})
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Comparison:
    method: str
    decision: str
    sentence: str
    row: dict


def compare_with_baseline(per_seed: dict[str, dict[int, dict]], correct: dict[str, dict[int, dict]]) -> list[Comparison]:
    """Each method (its own decision) against the baseline's head, seed by seed, on the test set.

    per_seed[method][seed] is eval's metrics; correct[method][seed][condition] says per test image
    whether the method's own decision was right.
    """
    comparisons = []
    baseline_seeds = per_seed[BASELINE]
    for method, seeds in per_seed.items():
        if method == BASELINE:
            continue
        paired = sorted(set(seeds) & set(baseline_seeds))
        decision = own_decision(seeds[paired[0]])

        def accuracies(name, rule, condition):
            return [per_seed[name][seed]["test"][condition][rule] for seed in paired]

        perturbed = paired_difference(accuracies(method, decision, "perturbed"), accuracies(BASELINE, "head", "perturbed"))
        robust = paired_difference([per_seed[method][seed]["robustness"]["robust"][decision] for seed in paired],
                                   [per_seed[BASELINE][seed]["robustness"]["robust"]["head"] for seed in paired])
        clean = paired_difference(accuracies(method, decision, "clean"), accuracies(BASELINE, "head", "clean"))
        mean, low, high = bootstrap_difference(np.stack([correct[method][seed]["perturbed"] for seed in paired]),
                                               np.stack([correct[BASELINE][seed]["perturbed"] for seed in paired]))
        label = f"{method} ({DECISIONS[decision]})"
        comparisons.append(Comparison(method, decision, verdict(label, perturbed, clean, robust), {
            "method": label, "seeds": len(paired),
            "perturbed - baseline (seeds, 95%)": perturbed.text(),
            "perturbed - baseline (test images, 95%)": f"{mean:+.1f} [{low:+.1f}, {high:+.1f}] points",
            "robust - baseline (seeds, 95%)": robust.text(),
            "clean - baseline (seeds, 95%)": clean.text()}))
    return comparisons


def gate_lines(gates: dict[str, list[str]]) -> list[str]:
    lines = []
    for method, failures in gates.items():
        if failures:
            lines.append(f"- **{method}: robustness numbers unreliable** ({'; '.join(failures)}). An attack that "
                         "fails these checks is probably not finding the adversarial examples that exist, so the "
                         "robust accuracy above overstates the model's robustness.")
        else:
            lines.append(f"- {method}: all gates pass.")
    return lines


def markdown_report(all_metrics: dict[str, dict], comparisons: list[Comparison],
                    gates: dict[str, list[str]] | None = None, provenance: list[str] | None = None,
                    comparable_with_write_up: bool = True) -> str:
    def table(rows):
        return tabulate(rows, headers="keys", tablefmt="github")
    verdict_lines = [f"- {comparison.sentence}" for comparison in comparisons]
    return "\n".join([
        "# Does adversarial training or angular-loss metric learning make ResNet18 more robust?", "",
        *((["## What produced these numbers", "", *provenance, ""]) if provenance else []),
        "## Verdict (test set, each method's own decision against the baseline's head)", "",
        *verdict_lines, "",
        table([comparison.row for comparison in comparisons]), "",
        "Differences are paired: the same training seed, split and perturbation plan for both models. "
        "*seeds, 95%*: mean of the per-seed differences +- the half-width of its 95% t-interval; "
        "*test images, 95%*: a bootstrap over test images of the seed-averaged difference.", "",
        "## Robust accuracy at the study's eps", "",
        "Test accuracy (%) under each attack at perturb.fgm.eps, and the worst case per image over all of "
        "them (a head: FGM and PGD; a 3-NN: PGD on the model's own decision, PGD on soft k-NN surrogates, the "
        "guide-sample attack and transfer from the baseline). `reports/robustness_curve.png` shows the eps sweep.", "",
        table(robust_rows(all_metrics)), "",
        "## Sanity gates (Carlini et al. 2019)", "",
        f"PGD no weaker than FGM at every eps; accuracy not rising with eps; at most {100 * BREAK_ACCURACY:.0f}% left "
        f"at {BREAK_EPS}/255; white-box no weaker than transfer (tolerance {100 * GATE_TOLERANCE:.1f} points).", "",
        *gate_lines(gates or {}), "",
        "## Test set", "",
        "Accuracy in %, mean +- std over training seeds. *perturbed*: the seeded plan (each image jittered / "
        "noised / FGM-attacked with probability p), FGM white-box against the evaluated model; *transfer*: the "
        "same images with FGM against the baseline of the same seed, identical for every model; *drop*: clean "
        f"minus perturbed. *head*: the model's 10-way head ({NOT_APPLICABLE} for the angular models, which have "
        "none); *3-NN*: k-nearest neighbours on its normalized embeddings, fit on the clean training set.", "",
        table(headline_rows(all_metrics, with_write_up=comparable_with_write_up)), "",
        ("The write-up's test accuracies (official archive, 100 epochs, one unseeded run) stand beside the "
         "full preset's." if comparable_with_write_up else
         "The write-up's numbers (baseline 70.93 / 46.56, adversarial 68.46 / 51.92, angular 73.23 / 52.07, "
         "clean / perturbed) are not shown beside these: this preset trains a smaller model for less time."), "",
        "## Test set, one perturbation on every image", "", table(single_perturbation_rows(all_metrics)), "",
        "## Every split", "", table(all_split_rows(all_metrics)), "",
        "Training accuracy of the 3-NN is leave-one-out (a point is never its own neighbour; a perturbed "
        "training image never sees its clean twin).", "",
    ])
