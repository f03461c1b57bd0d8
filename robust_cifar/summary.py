"""The study's answer in tables: accuracy per method, decision rule, split and condition."""
from __future__ import annotations

from tabulate import tabulate

from robust_cifar.conditions import CONDITIONS, KINDS, SPLITS

DECISIONS = {"head": "head", "knn": "3-NN"}
# Test accuracy (clean, perturbed) reported by the write-up, with the decision rule it used.
WRITE_UP = {"baseline": ("head", 70.93, 46.56), "adversarial": ("head", 68.46, 51.92), "angular": ("knn", 73.23, 52.07)}
NOT_APPLICABLE = "n/a"


def percent(value: float | None) -> str | float:
    return NOT_APPLICABLE if value is None else round(100 * value, 2)


def lookup(metrics: dict, split: str, condition: str, decision: str) -> float | None:
    return metrics.get(split, {}).get(condition, {}).get(decision)


def headline_rows(all_metrics: dict[str, dict]) -> list[dict]:
    """Test accuracy (%) clean / perturbed / transfer and the clean->perturbed drop, per decision rule."""
    rows = []
    for method, metrics in all_metrics.items():
        row = {"method": method}
        for decision, label in DECISIONS.items():
            values = {c: lookup(metrics, "test", c, decision) for c in CONDITIONS}
            for condition in CONDITIONS:
                row[f"{label} {condition}"] = percent(values[condition])
            drop = None if values["clean"] is None else values["clean"] - values["perturbed"]
            row[f"{label} drop"] = percent(drop)
        decision, clean, perturbed = WRITE_UP.get(method, (None, None, None))
        row["write-up clean / perturbed"] = f"{clean} / {perturbed} ({DECISIONS[decision]})" if decision else ""
        rows.append(row)
    return rows


def single_perturbation_rows(all_metrics: dict[str, dict]) -> list[dict]:
    """Test accuracy (%) with each perturbation applied alone to every image."""
    return [{"method": method, "decision": label,
             **{f"{kind} only": percent(lookup(metrics, "test", kind, decision)) for kind in KINDS}}
            for method, metrics in all_metrics.items() for decision, label in DECISIONS.items()
            if lookup(metrics, "test", "clean", decision) is not None]


def all_split_rows(all_metrics: dict[str, dict]) -> list[dict]:
    return [{"method": method, "decision": label,
             **{f"{split} {condition}": percent(lookup(metrics, split, condition, decision))
                for split in SPLITS for condition in CONDITIONS}}
            for method, metrics in all_metrics.items() for decision, label in DECISIONS.items()
            if lookup(metrics, "test", "clean", decision) is not None]


def markdown_report(all_metrics: dict[str, dict]) -> str:
    def table(rows):
        return tabulate(rows, headers="keys", tablefmt="github")
    return "\n".join([
        "# Does adversarial training or angular-loss metric learning make ResNet18 more robust?", "",
        "Accuracy in %. *perturbed*: the seeded plan (each image jittered / noised / FGM-attacked with "
        "probability p), FGM white-box against the evaluated model; *transfer*: the same images with FGM "
        "against the baseline, identical for every model; *drop*: clean minus perturbed. "
        f"*head*: the model's 10-way head ({NOT_APPLICABLE} for the angular model, which has none); "
        "*3-NN*: k-nearest neighbours on its normalized embeddings, fit on the clean training set.", "",
        "## Test set", "", table(headline_rows(all_metrics)), "",
        "## Test set, one perturbation on every image", "", table(single_perturbation_rows(all_metrics)), "",
        "## Every split", "", table(all_split_rows(all_metrics)), "",
        "Training accuracy of the 3-NN is leave-one-out (a point is never its own neighbour; a perturbed "
        "training image never sees its clean twin).", "",
    ])
