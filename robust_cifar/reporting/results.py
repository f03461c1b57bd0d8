"""Reading the results that evaluate and robustness write per seed (reports/seeds/<method>/<seed>.json and .csv,
reports/robustness/<method>/<seed>.json) and aggregate per method (reports/aggregate/<method>.json), each
checked against its schema: what summarize, the figures and aggregate look up in it. Each JSON also names
whose it is (RUN, METHOD): another run's file copied over this one's is well-formed, and would be mixed in."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from robust_cifar.conditions import SPLITS, conditions_for
from robust_cifar.errors import InputError, absent, get_back
from robust_cifar.schema import NUMBER, WHOLE, Each, Leaf, Optional, check_tree, map_leaves, named_only, refuse
from robust_cifar.training.methods import REFERENCE_METHOD

ACCURACY = Leaf("an accuracy from 0 to 1", lambda value: NUMBER.accepts(value) and 0 <= value <= 1)
# Accuracy per decision: every method has the 3-NN, only a method whose head decides has "head".
SCORES = {"knn": ACCURACY, "head": Optional(ACCURACY)}
# evaluate (evaluate.score_embeddings): {split: {condition: scores}}
SEED_METRICS = {split: {condition: SCORES for condition in conditions_for(split)} for split in SPLITS}
# robustness (robustness.robust_accuracy): at the study's eps, the cumulative curve per eps key, and
# each attack's own accuracy per eps key it ran at, or (attack.cascade) the share each attack broke first
ROBUSTNESS_REPORT = {"test_images": WHOLE, "study_eps_255": NUMBER, "clean": SCORES, "robust": SCORES,
                     "curve": Each(SCORES), "attacks": Optional(Each(Each(SCORES))),
                     "broken": Optional(Each(Each(SCORES)))}
# aggregate (aggregate.aggregate) of one run per seed (read_runs): every number becomes its mean and std over
# seeds; an empty object has no numbers, so it vanishes
METRICS = {**map_leaves({**SEED_METRICS, "robustness": ROBUSTNESS_REPORT},
                        leaf=lambda leaf: {"mean": ACCURACY if leaf is ACCURACY else NUMBER, "std": NUMBER},
                        each=Optional),
           "seeds": WHOLE}


def read_json(path: Path, produced_by: str, schema: Any = None) -> Any:
    """The JSON at `path`, checked against `schema` where one is given."""
    if not path.is_file():
        raise absent(path, produced_by)
    try:
        tree = json.loads(path.read_text())
    except (ValueError, RecursionError):   # not JSON, not text, or an integer of over 4,300 digits or nested too deep
        raise InputError(f"{path} is not valid JSON (truncated?): {get_back(path, produced_by)}") from None
    if schema is not None:
        check_tree(tree, schema, path, produced_by)
    return tree


RUN = "run"         # in a per-seed file: its `<method>-<seed>`
METHOD = "method"   # in an aggregate: its method
KNN_K = "knn_k"     # in each: the k of the k-NN that scored it (its name in every report: "3-NN")
PREDICTIONS = "predictions_md5"   # in evaluate's per-seed file: the md5 of the predictions table beside it


def table_digest(table: bytes) -> str:
    """What evaluate's per-seed file records of its predictions table (PREDICTIONS)."""
    return hashlib.md5(table, usedforsecurity=False).hexdigest()


def stamped(tree: dict, key: str, owner: str) -> dict:
    """What a stage writes: `tree` with whose it is."""
    return {key: owner, **tree}


def check_owner(tree: dict, key: str, owner: str, path: Path, produced_by: str) -> dict:
    """`tree` without its owner's stamp, refused (one line) where the stamp names another run or method."""
    if tree.get(key) != owner:
        problem = f"no `{key}`" if key not in tree else f"the results of {tree[key]}, not of {owner}"
        raise refuse(path, produced_by, problem)
    return {name: value for name, value in tree.items() if name != key}


def scores_of(tree: Any) -> list[dict]:
    """Every SCORES object (one accuracy per decision) in a results tree."""
    if not isinstance(tree, dict):
        return []
    return [tree] if "knn" in tree else [scores for value in tree.values() for scores in scores_of(value)]


def checked_decisions(tree: dict, method: str, path: Path, produced_by: str) -> dict:
    """`tree`, refused (one line) unless every score in it has a `head` or none does, and the reference method's
    do (every method is compared with its head): a file that lost some was scored, or compared, without a word."""
    heads = {"head" in scores for scores in scores_of(tree)}
    if heads == {True, False}:
        raise refuse(path, produced_by, "some scores have a `head` accuracy and some have none")
    if method == REFERENCE_METHOD and False in heads:
        raise refuse(path, produced_by, f"no `head` accuracy, which {REFERENCE_METHOD}'s head decides with")
    return tree


def check_k(tree: dict, k: int | None, path: Path, produced_by: str) -> None:
    """Refuse (one line) a report scored by another k-NN than params.yaml's `knn.k` = `k` (None: any): under `dvc
    repro -s` a summary labelled a 3-NN's numbers "5-NN"."""
    if k is None or tree.get(KNN_K) == k:
        return
    if KNN_K not in tree:
        raise refuse(path, produced_by, f"no `{KNN_K}`")
    # not damage: knn.k was edited since, and the stage, or one before it, has not rerun (`dvc repro -s`)
    raise InputError(f"{path} was scored by a {tree[KNN_K]}-NN, where params.yaml's knn.k is {k}: rerun it with "
                     f"`dvc repro {produced_by}` (without -s: it rescores what it reads first)")


def read_seed_metrics(folder: Path, seeds: list[int], method: str, stage: str, schema: Any,
                      k: int | None = None) -> dict[int, dict]:
    """{seed: metrics} of one method for exactly `seeds` (files of seeds no longer listed are ignored), with only
    the keys of `schema`; where `k` is given, scored by that k-NN."""
    runs = {}
    for seed in sorted(seeds):
        path, produced_by = folder / f"{seed}.json", f"{stage}@{method}-{seed}"
        owned = check_owner(read_json(path, produced_by, schema), RUN, f"{method}-{seed}", path, produced_by)
        check_k(owned, k, path, produced_by)
        runs[seed] = checked_decisions(named_only(owned, schema), method, path, produced_by)
    return runs


def read_runs(seed_results: Path, robustness_results: Path, seeds: list[int], method: str,
              k: int | None = None) -> dict[int, dict]:
    """{seed: evaluate's metrics with the robustness stage's results under "robustness"} of one method."""
    metrics = read_seed_metrics(seed_results, seeds, method, "evaluate", SEED_METRICS, k)
    robustness = read_seed_metrics(robustness_results, seeds, method, "robustness", ROBUSTNESS_REPORT, k)
    return {seed: {**metrics[seed], "robustness": robustness[seed]} for seed in metrics}


def read_metrics(path: Path, produced_by: str, method: str | None = None, k: int | None = None) -> dict:
    """One method's metrics over seeds, as aggregate writes them; where `method` is given, refused unless the
    file is that method's (without its stamp), and where `k` is, unless that k-NN scored it."""
    metrics = read_json(path, produced_by, METRICS)
    if method is not None:
        check_owner(metrics, METHOD, method, path, produced_by)
    check_k(metrics, k, path, produced_by)
    return checked_decisions(named_only(metrics, METRICS), method or path.stem, path, produced_by)


def read_correct(path: Path, produced_by: str) -> dict[str, np.ndarray]:
    """Per test image, whether the method's own decision was right: {"clean": bool (N,), "perturbed": ...}; refused
    unless the table is the one its run's per-seed file (the .json beside it) records: a table cut short, edited or
    of another run was read as well-formed, and the bootstrap paired it with the wrong images."""
    if not path.is_file():
        raise absent(path, produced_by)
    table, record = path.read_bytes(), path.with_suffix(".json")
    recorded = read_json(record, produced_by)
    # which of the two is off, no file can tell: both are restored
    if not isinstance(recorded, dict) or recorded.get(PREDICTIONS) != table_digest(table):
        raise InputError(f"{path} is not the predictions table that {record.name} beside it records (cut short, "
                         f"edited, or of another run; or {record.name} is): {get_back(f'{path} {record}', produced_by)}")
    try:
        rows = list(csv.DictReader(table.decode().splitlines()))
    except (csv.Error, UnicodeDecodeError):
        rows = []
    columns = ("actual", "clean", "perturbed")
    # a short row reads None, a row of a garbled file ""; the file names a class in each of the three columns
    if not rows or not all(row.get(column) for row in rows for column in columns):
        raise InputError(f"{path} is not a predictions table (a class in each of {', '.join(columns)} per test image): "
                         f"{get_back(path, produced_by)}")
    actual = np.array([row["actual"] for row in rows])
    return {condition: np.array([row[condition] for row in rows]) == actual for condition in ("clean", "perturbed")}
