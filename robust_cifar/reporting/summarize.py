"""The study's answer in tables and one sentence per method: accuracy as mean +- std over training
seeds, and each method against the baseline as a paired difference with a 95% interval."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tabulate import tabulate

from robust_cifar.conditions import CONDITIONS, DECISIONS, KINDS, SPLITS, decision_labels
from robust_cifar.evaluation.attack_registry import ATTACKS, eps_key, eps_of
from robust_cifar.reporting.aggregate import bootstrap_difference, paired_difference, verdict
from robust_cifar.training.methods.registry import REFERENCE_METHOD, REGISTRY, WRITE_UP_K, label, write_up
NOT_APPLICABLE = "n/a"


def write_up_numbers() -> str:
    """'baseline 70.93 / 46.56, adversarial 68.46 / 51.92, ...': every registered method the write-up reported."""
    return ", ".join(f"{name} {numbers[1]} / {numbers[2]}" for name in REGISTRY if (numbers := write_up(name)))


def cell(entry: dict | None) -> str:
    """'64.78 +- 0.31' (percent, mean +- std over seeds); the mean alone when there is no spread to show."""
    if entry is None:
        return NOT_APPLICABLE
    mean, std = 100 * entry["mean"], 100 * entry["std"]
    return f"{mean:.2f} +- {std:.2f}" if std > 0 else f"{mean:.2f}"


def lookup(metrics: dict, split: str, condition: str, decision: str) -> dict | None:
    return metrics.get(split, {}).get(condition, {}).get(decision)


def own_decision(metrics: dict) -> str:
    """How the method classifies: its head when it has one, else the k-NN."""
    return "head" if "head" in metrics["test"]["clean"] else "knn"


# The headline numbers (reports/metrics.json: what `dvc metrics show` and `dvc exp show` list) of each method's own
# decision on the test set: (where in its aggregate, condition) by name; each as percent, mean and std over seeds
HEADLINE_SOURCES = {"clean": ("test", "clean"), "perturbed": ("test", "perturbed"),
                    "robust": ("robustness", "robust")}


def headline_metrics(all_metrics: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{method's label: {"clean": %, "clean_std": %, "perturbed": ..., "robust": ...}}: short keys, so that
    `dvc exp show` fits every method's numbers in one terminal (the label says which method, README)."""
    headline = {}
    for method, metrics in all_metrics.items():
        decision, entry = own_decision(metrics), {}
        for name, (section, condition) in HEADLINE_SOURCES.items():
            scores = metrics[section][condition][decision]
            entry[name], entry[f"{name}_std"] = round(100 * scores["mean"], 2), round(100 * scores["std"], 2)
        headline[label(method)] = entry
    return headline


def headline_rows(all_metrics: dict[str, dict], labels: dict[str, str], with_write_up: bool = True) -> list[dict]:
    """Test accuracy (%) clean / perturbed / transfer and the clean->perturbed drop, per decision rule
    (named by `labels`, conditions.decision_labels); the write-up's numbers beside them only where the
    settings are comparable."""
    rows = []
    for method, metrics in all_metrics.items():
        row = {"method": method, "seeds": metrics.get("seeds", 0)}
        for decision, named in labels.items():
            values = {c: lookup(metrics, "test", c, decision) for c in CONDITIONS}
            for condition in CONDITIONS:
                row[f"{named} {condition}"] = cell(values[condition])
            row[f"{named} drop"] = (NOT_APPLICABLE if values["clean"] is None else
                                    f"{100 * (values['clean']['mean'] - values['perturbed']['mean']):.2f}")
        if with_write_up:
            decision, clean, perturbed = write_up(method) or (None, None, None)
            written = decision_labels(WRITE_UP_K).get(decision)   # its decision as the write-up named it
            row["write-up clean / perturbed"] = f"{clean} / {perturbed} ({written})" if decision else ""
        rows.append(row)
    return rows


def single_perturbation_rows(all_metrics: dict[str, dict], labels: dict[str, str]) -> list[dict]:
    """Test accuracy (%) with each perturbation applied alone to every image."""
    return [{"method": method, "decision": label,
             **{f"{kind} only": cell(lookup(metrics, "test", kind, decision)) for kind in KINDS}}
            for method, metrics in all_metrics.items() for decision, label in labels.items()
            if lookup(metrics, "test", "clean", decision) is not None]


def all_split_rows(all_metrics: dict[str, dict], labels: dict[str, str]) -> list[dict]:
    return [{"method": method, "decision": label,
             **{f"{split} {condition}": cell(lookup(metrics, split, condition, decision))
                for split in SPLITS for condition in CONDITIONS}}
            for method, metrics in all_metrics.items() for decision, label in labels.items()
            if lookup(metrics, "test", "clean", decision) is not None]


# A sanity gate tolerates this much (accuracy, as a fraction) before it calls a result suspect: two
# attacks on a finite test set can differ by an image or two where both are strong.
GATE_TOLERANCE = 0.005
BREAK_EPS = 32          # in 1/255: by here the strongest attack on a decision leaves at most BREAK_ACCURACY
BREAK_ACCURACY = 0.02   # CIFAR-10 models of this study are not robust at 32/255: more means the attacks fail


def mean_curve(points: dict, decision: str) -> dict[float, float]:
    """{eps in 1/255: mean over seeds} of one decision, from {eps key: {decision: {mean, std}}}."""
    return {eps_of(key): entry[decision]["mean"] for key, entry in sorted(points.items(), key=lambda kv: eps_of(kv[0]))
            if decision in entry}


def attack_curve(robustness: dict, attack: str, decision: str) -> dict[float, float]:
    """{eps in 1/255: mean accuracy over seeds} of one attack on one decision, at the eps it ran at."""
    return mean_curve(robustness.get("attacks", {}).get(attack, {}), decision)


def decisions_of(robustness: dict) -> list[str]:
    return [decision for decision in DECISIONS if decision in robustness.get("clean", {})]


def gate_failures(metrics: dict, labels: dict[str, str]) -> list[str]:
    """The sanity checks of Carlini et al. 2019 ("On Evaluating Adversarial Robustness") that these
    robustness numbers fail, in words; an empty list when all pass.

    They compare each attack's OWN accuracy (not the cumulative worst case, which passes them by
    construction), on the decisions the attack aims at: no iterative attack gains accuracy as eps grows; an
    attack is never more accurate than the weaker ones the registry names (`at_most`: more steps,
    APGD <= PGD <= FGM, white-box <= transfer); and at BREAK_EPS the strongest attack on each decision
    leaves at most BREAK_ACCURACY. A cascade (`attack.cascade`) measures no attack's own accuracy: there
    the break check applies to the robust accuracy itself, and the others cannot be made.
    """
    robustness = metrics.get("robustness", {})
    decisions = decisions_of(robustness)
    failures = []
    for name, spec in ATTACKS.items():
        for decision in spec.aimed_decisions(decisions):
            curve = attack_curve(robustness, name, decision)
            if not curve:
                continue
            label = labels[decision]
            points = list(curve.items())
            rises = [eps for (_, a), (eps, b) in zip(points, points[1:]) if b > a + GATE_TOLERANCE]
            if rises and spec.iterative:
                failures.append(f"{label}: {name} accuracy rises with eps at {', '.join(f'{e:g}' for e in rises)}/255")
            for weaker in spec.at_most:
                other = attack_curve(robustness, weaker, decision)
                worse = [eps for eps, value in curve.items() if eps in other and value > other[eps] + GATE_TOLERANCE]
                if worse:
                    failures.append(f"{label}: {name} is weaker than {weaker} at eps {', '.join(f'{e:g}' for e in worse)}"
                                    f"/255 ({100 * curve[worse[0]]:.1f}% vs {100 * other[worse[0]]:.1f}%)")
    for decision in decisions:
        aimed = [name for name, spec in ATTACKS.items() if decision in spec.aimed_decisions(decisions)]
        largest = {name: max(curve.items()) for name in aimed if (curve := attack_curve(robustness, name, decision))}
        at_break = {name: value for name, (eps, value) in largest.items() if eps >= BREAK_EPS}
        if at_break and min(at_break.values()) > BREAK_ACCURACY:
            best = min(at_break, key=at_break.get)
            failures.append(f"{labels[decision]}: {100 * at_break[best]:.1f}% survive the strongest attack ({best}) "
                            f"at eps {largest[best][0]:g}/255 (expected at most {100 * BREAK_ACCURACY:.0f}%)")
        robust = mean_curve(robustness.get("curve", {}), decision) if "broken" in robustness else {}
        eps, value = max(robust.items()) if robust else (0, 0)
        if eps >= BREAK_EPS and value > BREAK_ACCURACY:
            failures.append(f"{labels[decision]}: {100 * value:.1f}% survive every attack at eps {eps:g}/255 "
                            f"(expected at most {100 * BREAK_ACCURACY:.0f}%)")
    return failures


def unchecked_gates(metrics: dict, labels: dict[str, str]) -> list[str]:
    """Where `gate_failures`' break gate could not be made, in words (an empty list when it was made for every
    decision): no attack aimed at a decision ran (its robust accuracy is then its clean accuracy), or none reached
    BREAK_EPS (`attack.eps_255` ends below it). "All gates pass" would otherwise vouch for numbers no attack tested."""
    robustness = metrics.get("robustness", {})
    decisions = decisions_of(robustness)
    ran = robustness.get("broken" if "broken" in robustness else "attacks", {})   # per attack, the eps it ran at
    unchecked = []
    for decision in decisions:
        aimed = [name for name, spec in ATTACKS.items() if decision in spec.aimed_decisions(decisions)]
        reached = [max(map(eps_of, ran[name])) for name in aimed if ran.get(name)]
        if not reached:
            unchecked.append(f"{labels[decision]}: no attack aimed at it ran, so its robust accuracy is its clean "
                             "accuracy")
        elif max(reached) < BREAK_EPS:
            unchecked.append(f"{labels[decision]}: no attack reached {BREAK_EPS}/255, the largest eps being "
                             f"{max(reached):g}/255")
    return unchecked


def robust_rows(all_metrics: dict[str, dict], labels: dict[str, str]) -> list[dict]:
    """Per method and decision, at the study's eps (%): clean accuracy on the attacked images, robust
    accuracy (right on the clean image and under every attack, cumulative over eps), and each
    attack's own accuracy (or, in a cascade, the share of the images it was the first to break, at this
    eps or a smaller one)."""
    rows = []
    for method, metrics in all_metrics.items():
        robustness = metrics.get("robustness", {})
        if not robustness:
            continue
        study = eps_key(robustness["study_eps_255"]["mean"])
        for decision in decisions_of(robustness):
            row = {"method": method, "decision": labels[decision],
                   "clean": cell(robustness["clean"][decision]), "robust": cell(robustness["robust"][decision])}
            # registry order (the aggregate's keys are sorted); n/a where an attack did not run here
            for key, column in (("attacks", "{}"), ("broken", "{} broke")):
                attacks = robustness.get(key, {})
                row.update({column.format(name): cell(attacks[name][study][decision]) if study in attacks.get(name, {})
                            else NOT_APPLICABLE for name in ATTACKS
                            if any(name in m.get("robustness", {}).get(key, {}) for m in all_metrics.values())})
            rows.append(row)
    return rows


def study_eps_text(all_metrics: dict[str, dict]) -> str:
    values = {metrics["robustness"]["study_eps_255"]["mean"] for metrics in all_metrics.values() if "robustness" in metrics}
    return ", ".join(f"{value:g}/255" for value in sorted(values)) or "the study's eps"


def attacked_images_text(all_metrics: dict[str, dict]) -> str:
    """How many test images each run's attacks ran on (`attack.test_images`): "the 1,000", or each count."""
    counts = {round(metrics["robustness"]["test_images"]["mean"]) for metrics in all_metrics.values()
              if "robustness" in metrics}
    return f"the {' or '.join(f'{count:,}' for count in sorted(counts))}" if counts else "the"


@dataclass(frozen=True)
class Comparison:
    method: str
    decision: str
    sentence: str
    row: dict


def compare_with_baseline(per_seed: dict[str, dict[int, dict]], correct: dict[str, dict[int, dict]],
                          labels: dict[str, str]) -> list[Comparison]:
    """Each method (its own decision) against the baseline's head, seed by seed, on the test set.

    per_seed[method][seed] is evaluate's metrics; correct[method][seed][condition] says per test image
    whether the method's own decision was right.
    """
    comparisons = []
    baseline_seeds = per_seed[REFERENCE_METHOD]
    for method, seeds in per_seed.items():
        if method == REFERENCE_METHOD:
            continue
        paired = sorted(set(seeds) & set(baseline_seeds))
        decision = own_decision(seeds[paired[0]])

        def accuracies(name, rule, condition):
            return [per_seed[name][seed]["test"][condition][rule] for seed in paired]

        perturbed = paired_difference(accuracies(method, decision, "perturbed"), accuracies(REFERENCE_METHOD, "head", "perturbed"))
        robust = paired_difference([per_seed[method][seed]["robustness"]["robust"][decision] for seed in paired],
                                   [per_seed[REFERENCE_METHOD][seed]["robustness"]["robust"]["head"] for seed in paired])
        clean = paired_difference(accuracies(method, decision, "clean"), accuracies(REFERENCE_METHOD, "head", "clean"))
        mean, low, high = bootstrap_difference(np.stack([correct[method][seed]["perturbed"] for seed in paired]),
                                               np.stack([correct[REFERENCE_METHOD][seed]["perturbed"] for seed in paired]))
        label = f"{method} ({labels[decision]})"
        comparisons.append(Comparison(method, decision, verdict(label, perturbed, clean, robust), {
            "method": label, "seeds": len(paired),
            f"perturbed - {REFERENCE_METHOD} (seeds, 95%)": perturbed.text(),
            f"perturbed - {REFERENCE_METHOD} (test images, 95%)": f"{mean:+.1f} [{low:+.1f}, {high:+.1f}] points",
            f"robust - {REFERENCE_METHOD} (seeds, 95%)": robust.text(),
            f"clean - {REFERENCE_METHOD} (seeds, 95%)": clean.text()}))
    return comparisons


def gate_lines(gates: dict[str, list[str]], unchecked: dict[str, list[str]] | None = None) -> list[str]:
    lines = []
    for method, failures in gates.items():
        if failures:
            lines.append(f"- **{method}: ROBUSTNESS NUMBERS UNRELIABLE** ({'; '.join(failures)}). An attack that "
                         "fails these checks is probably not finding the adversarial examples that exist, so the "
                         "robust accuracy above may overstate the model's robustness.")
        elif (unchecked or {}).get(method):
            lines.append(f"- {method}: no gate failed, but the break gate could not be checked "
                         f"({'; '.join(unchecked[method])}).")
        else:
            lines.append(f"- {method}: all gates pass.")
    return lines


def failed_gate_warning(gates: dict[str, list[str]]) -> list[str]:
    failed = [method for method, failures in gates.items() if failures]
    if not failed:
        return []
    return [f"**Sanity gates FAILED for {', '.join(failed)}**: their robust accuracies may be overstated "
            "(see [Sanity gates](#sanity-gates-carlini-et-al-2019)).", ""]


def markdown_report(all_metrics: dict[str, dict], comparisons: list[Comparison], labels: dict[str, str],
                    gates: dict[str, list[str]] | None = None, provenance: list[str] | None = None,
                    comparable_with_write_up: bool = True, unchecked: dict[str, list[str]] | None = None) -> str:
    def table(rows):
        return tabulate(rows, headers="keys", tablefmt="github")
    verdict_lines = [f"- {comparison.sentence}" for comparison in comparisons]
    return "\n".join([
        "# Does adversarial training or angular-loss metric learning make ResNet18 more robust?", "",
        *((["## What produced these numbers", "", *provenance, ""]) if provenance else []),
        "## Verdict (test set, each method's own decision against the baseline's head)", "",
        *verdict_lines, "",
        *failed_gate_warning(gates or {}),
        table([comparison.row for comparison in comparisons]), "",
        "Differences are paired: the same training seed, split and perturbation plan for both models. "
        "*seeds, 95%*: mean of the per-seed differences +- the half-width of its 95% t-interval; "
        "*test images, 95%*: a bootstrap over test images of the seed-averaged difference.", "",
        f"## Robust accuracy at {study_eps_text(all_metrics)}", "",
        f"Test accuracy (%) on {attacked_images_text(all_metrics)} attacked test images (`attack.test_images`). "
        "*robust*: right on the clean image AND under every attack at every eps up to this one, each attack aiming "
        "away from the true label (float32); the other columns are each attack's own accuracy (right on the clean "
        "image and on that attack's images), or, where `attack.cascade` ran each attack only on what the earlier "
        "ones left (AutoAttack's protocol), *broke*: the share of the test images it was the first to break, at "
        "this eps or a smaller one (robust = clean minus every *broke*). Every attack's images are scored by both "
        "decisions, whichever it aimed at. "
        "`reports/robustness_curve.png` shows the curves over eps.", "",
        table(robust_rows(all_metrics, labels)), "",
        *[f"- `{name}`: {spec.about}." for name, spec in ATTACKS.items()], "",
        "## Sanity gates (Carlini et al. 2019)", "",
        "On each attack's own accuracy, on the decisions it aims at: no iterative attack gains accuracy as eps grows "
        "(one step of FGM may overshoot at a large eps); "
        "none is more accurate than the weaker attacks it must beat (" + "; ".join(
            f"{name} <= {', '.join(spec.at_most)}" for name, spec in ATTACKS.items() if spec.at_most) +
        f"); at {BREAK_EPS}/255 the strongest attack on each decision leaves at most {100 * BREAK_ACCURACY:.0f}% "
        f"(tolerance {100 * GATE_TOLERANCE:.1f} points, on the means over seeds). A cascade measures no attack's "
        "own accuracy: there only the last check applies, to the robust accuracy.", "",
        *gate_lines(gates or {}, unchecked), "",
        "## Test set", "",
        "Accuracy in %, mean +- std over training seeds. *perturbed*: the write-up's condition, not robust "
        "accuracy: the seeded plan (each image jittered / noised / FGM-attacked with probability p), FGM "
        "against the evaluated model's own prediction (as cleverhans with y=None); *transfer*: the "
        "same images with FGM against the baseline of the same seed, identical for every model; *drop*: clean "
        f"minus perturbed. *head*: the model's 10-way head ({NOT_APPLICABLE} for the angular models, which have "
        f"none); *{labels['knn']}*: k-nearest neighbours on its normalized embeddings, fit on the clean training set.", "",
        table(headline_rows(all_metrics, labels, with_write_up=comparable_with_write_up)), "",
        ("The write-up's test accuracies (official archive, 100 epochs, one unseeded run) stand beside the "
         "full preset's." if comparable_with_write_up else
         f"The write-up's numbers ({write_up_numbers()}, clean / perturbed) are not shown beside these: this "
         "preset trains a smaller model for less time."), "",
        "## Test set, one perturbation on every image", "", table(single_perturbation_rows(all_metrics, labels)), "",
        "## Every split", "", table(all_split_rows(all_metrics, labels)), "",
        f"Training accuracy of the {labels['knn']} is leave-one-out (a point is never its own neighbour; a perturbed "
        "training image never sees its clean twin).", "",
    ])
