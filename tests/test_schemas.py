"""Files of the wrong shape (issue 22, item 5): every file a stage reads is checked against its declared schema,
and one that does not match is exactly one line naming the file, what is wrong and the command that remakes it.

The valid files are made by the writers themselves (embed.flatten and the embed stage's arrays, evaluate, aggregate,
save_model), so a schema that drifted from its writer fails here too."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_cifar.conditions import SPLITS, conditions_for
from robust_cifar.data.split import load_split_indices, stratified_split
from robust_cifar.errors import InputError
from robust_cifar.evaluation.embed import flatten
from robust_cifar.evaluation.embeddings import load_embeddings
from robust_cifar.evaluation.evaluate import score_embeddings
from robust_cifar.model import CifarResNet18, ModelConfig, load_model, save_model
from robust_cifar.npz import save_npz
from robust_cifar.perturbations.perturb import PerturbSettings, load_plans, make_plan, save_plans
from robust_cifar.reporting.aggregate import aggregate
from robust_cifar.reporting.curves import read_training_curves
from robust_cifar.reporting.provenance import SOURCE
from robust_cifar.reporting.results import (KNN_K, METHOD, PREDICTIONS, RUN as RESULTS_RUN, read_correct, read_json,
                                           read_metrics, read_runs, scores_of, stamped, table_digest)
from robust_cifar.schema import NUMBER, Each, Optional, tree_problem
from robust_cifar.training.methods import REFERENCE_METHOD
from tests.methods import ANGULAR, HEAD

CLASSES = tuple(f"class{index}" for index in range(10))
ROWS, DIM = 12, 8
RUN = f"{HEAD}-0"
STAGE = f"embed@{RUN}"


def one_line(error: pytest.ExceptionInfo, path: Path, stage: str, *words: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    assert str(path) in message and f"dvc repro -f -s {stage}`" in message, message
    for word in words:
        assert word in message, message
    return message


# --- embeddings --------------------------------------------------------------------------------

def embedding_arrays(with_logits: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """What stages/embed.py writes: its run and class_names, then per split flatten(...) and the labels."""
    generator = torch.Generator().manual_seed(seed)
    arrays = {"run": np.array(RUN), "class_names": np.array(CLASSES)}
    for split in SPLITS:
        results = {condition: (torch.randn(ROWS, DIM, generator=generator), torch.randn(ROWS, len(CLASSES), generator=generator))
                   for condition in conditions_for(split)}
        arrays.update(flatten(split, results, with_logits=with_logits))
        arrays[f"{split}.labels"] = np.arange(ROWS, dtype=np.int64) % len(CLASSES)
    return arrays


def written(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "data" / "embeddings" / f"{RUN}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, arrays)
    return path


@pytest.mark.parametrize("with_logits", [True, False], ids=["head", "no head"])
def test_the_embeddings_embed_writes_pass_and_score(tmp_path, with_logits):
    path = written(tmp_path, embedding_arrays(with_logits))
    arrays = load_embeddings(path, RUN, num_classes=len(CLASSES), embedding_dim=DIM)
    metrics, _ = score_embeddings(arrays, 1, torch.device("cpu"))
    assert ("head" in metrics["test"]["clean"]) == with_logits


def without(key):
    return lambda arrays: arrays.pop(key)


def replaced(key, value):
    return lambda arrays: arrays.__setitem__(key, value(arrays[key]))


BAD_EMBEDDINGS = [
    ("without a key", without("val.transfer.embeddings"), "no val.transfer.embeddings"),
    ("without the labels", without("test.labels"), "no test.labels"),
    ("without the class names", without("class_names"), "no class_names"),
    ("without its run", without("run"), "no run"),   # written before embed stamped its run, or by hand
    ("runs as a list", replaced("run", lambda run: np.array([str(run)] * 2)), "run has 1 dimension (2,), not 0"),
    ("5 labels for 12 rows", replaced("train.labels", lambda labels: labels[:5]),
     "train.labels has 5 train images, train.clean.embeddings 12"),
    ("string embeddings", replaced("train.clean.embeddings", lambda values: values.astype(str)),
     "train.clean.embeddings holds text"),
    ("string labels", replaced("test.labels", lambda labels: labels.astype(str)), "test.labels holds text (<U21), not integers"),
    ("float labels", replaced("val.labels", lambda labels: labels.astype(np.float32)), "val.labels holds floats"),
    ("numeric class names", replaced("class_names", lambda names: np.arange(len(names))), "class_names holds integers"),
    ("1-D embeddings", replaced("test.noise.embeddings", lambda values: values[:, 0]),
     "test.noise.embeddings has 1 dimension (12,), not 2"),
    ("one condition of another width", replaced("test.fgm.embeddings", lambda values: values[:, :3]),
     "test.fgm.embeddings has 3 embedding dimensions, train.clean.embeddings 8"),
    ("a label past the classes", replaced("train.labels", lambda labels: labels + 5), "train.labels holds values outside 0..9"),
    ("logits of 5 classes", replaced("val.clean.logits", lambda values: values[:, :5]),
     "val.clean.logits has 5 classes, class_names 10"),
    ("logits of one condition missing", without("val.perturbed.logits"), "no val.perturbed.logits"),
    # what a diverged model, or a hand edit, leaves: a 3-NN then scores chance and looks like a result
    ("NaN embeddings", replaced("train.clean.embeddings", lambda values: np.full_like(values, np.nan)),
     f"train.clean.embeddings holds {ROWS * DIM} NaN or infinite values"),
    ("an infinite logit", replaced("test.clean.logits", lambda values: np.where(np.arange(values.size).reshape(values.shape) == 3,
                                                                              np.inf, values).astype(values.dtype)),
     "test.clean.logits holds 1 NaN or infinite values"),
    ("an empty split", lambda arrays: arrays.update({key: value[:0] for key, value in arrays.items() if key.startswith("val.")}),
     "has no val images"),
]


@pytest.mark.parametrize("damage, words", [case[1:] for case in BAD_EMBEDDINGS], ids=[case[0] for case in BAD_EMBEDDINGS])
def test_an_embeddings_file_of_the_wrong_shape_is_one_line(tmp_path, damage, words):
    arrays = embedding_arrays()
    damage(arrays)
    path = written(tmp_path, arrays)
    with pytest.raises(InputError) as error:
        load_embeddings(path, RUN)
    one_line(error, path, STAGE, f"does not hold what {STAGE} writes", words)


@pytest.mark.parametrize("known, words", [
    (dict(num_classes=5), "class_names has 10 classes, the model 5"),
    (dict(embedding_dim=128), "train.clean.embeddings has 8 embedding dimensions, the model 128"),
])
def test_embeddings_of_another_model_are_refused(tmp_path, known, words):
    path = written(tmp_path, embedding_arrays())
    with pytest.raises(InputError) as error:
        load_embeddings(path, RUN, **known)
    one_line(error, path, STAGE, words)


def test_another_runs_embeddings_copied_over_this_ones_are_refused(tmp_path):
    """`cp data/embeddings/<a>-0.npz data/embeddings/<b>-0.npz` leaves a well-formed file: its stamp tells."""
    arrays = embedding_arrays()
    arrays["run"] = np.array(f"{HEAD}-1")
    path = written(tmp_path, arrays)
    with pytest.raises(InputError) as error:
        load_embeddings(path, RUN)
    one_line(error, path, STAGE, f"the embeddings of {HEAD}-1, not of {RUN}")


# --- per-seed reports and metrics --------------------------------------------------------------

ROBUSTNESS_REPORT = {"test_images": ROWS, "study_eps_255": 8.0, "clean": {"head": 0.5, "knn": 0.25},
                     "robust": {"head": 0.0, "knn": 0.0},
                     "curve": {"eps_2": {"head": 0.25, "knn": 0.25}, "eps_8": {"head": 0.0, "knn": 0.0}},
                     "attacks": {"fgm": {"eps_2": {"head": 0.25, "knn": 0.5}, "eps_8": {"head": 0.0, "knn": 0.0}},
                                 "pgd": {"eps_8": {"head": 0.0, "knn": 0.0}}}}


def seed_files(root: Path, seeds=(0, 1), method: str = HEAD) -> tuple[Path, Path]:
    """evaluate's metrics (scored by evaluate.score_embeddings) and robustness reports, one per seed."""
    seeds_folder, robustness_folder = root / "reports/seeds" / method, root / "reports/robustness" / method
    seeds_folder.mkdir(parents=True)
    robustness_folder.mkdir(parents=True)
    for seed in seeds:
        metrics, _ = score_embeddings(embedding_arrays(seed=seed), 1, torch.device("cpu"))
        (seeds_folder / f"{seed}.json").write_text(json.dumps(stamped(metrics, RESULTS_RUN, f"{method}-{seed}")))
        (robustness_folder / f"{seed}.json").write_text(json.dumps(stamped(ROBUSTNESS_REPORT, RESULTS_RUN,
                                                                            f"{method}-{seed}")))
    return seeds_folder, robustness_folder


def test_the_reports_eval_robustness_and_aggregate_write_pass(tmp_path):
    seeds_folder, robustness_folder = seed_files(tmp_path)
    runs = read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)
    assert sorted(runs) == [0, 1] and runs[0]["robustness"]["robust"]["knn"] == 0.0
    assert RESULTS_RUN not in runs[0] and RESULTS_RUN not in runs[0]["robustness"]   # the stamps are not metrics
    path = tmp_path / f"{HEAD}.json"
    path.write_text(json.dumps(stamped(aggregate(runs), METHOD, HEAD)))
    assert read_metrics(path, f"aggregate@{HEAD}", HEAD)["seeds"] == 2
    assert METHOD not in read_metrics(path, f"aggregate@{HEAD}", HEAD)


@pytest.mark.parametrize("stage", ["evaluate", "robustness"])
def test_another_runs_report_copied_over_this_ones_is_refused(tmp_path, stage):
    """`cp reports/seeds/<a>/0.json reports/seeds/<b>/0.json`, then `dvc repro -s aggregate@<b>`: it was averaged in."""
    seeds_folder, robustness_folder = seed_files(tmp_path)
    other_folder, other_robustness = seed_files(tmp_path / "other", method=ANGULAR)
    source, target = ((other_folder, seeds_folder) if stage == "evaluate" else (other_robustness, robustness_folder))
    shutil.copy(source / "1.json", target / "1.json")
    with pytest.raises(InputError) as error:
        read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)
    one_line(error, target / "1.json", f"{stage}@{HEAD}-1", f"the results of {ANGULAR}-1, not of {HEAD}-1")
    (target / "1.json").write_text(json.dumps({key: value for key, value in json.loads((target / "1.json").read_text()).items()
                                               if key != RESULTS_RUN}))   # written before the stamp
    with pytest.raises(InputError, match="no `run`"):
        read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)


def test_another_methods_aggregate_copied_over_this_ones_is_refused(tmp_path):
    """`cp reports/aggregate/<a>.json reports/aggregate/<b>.json`: summarize showed <a>'s numbers as <b>'s."""
    seeds_folder, robustness_folder = seed_files(tmp_path)
    path = tmp_path / f"{HEAD}.json"
    path.write_text(json.dumps(stamped(aggregate(read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)), METHOD,
                                       ANGULAR)))
    with pytest.raises(InputError) as error:
        read_metrics(path, f"aggregate@{HEAD}", HEAD)
    one_line(error, path, f"aggregate@{HEAD}", f"the results of {ANGULAR}, not of {HEAD}")


def test_the_published_metrics_pass():
    for path in sorted(Path("results").glob("*/metrics/*.json")):
        read_metrics(path, f"aggregate@{path.stem}")


BAD_REPORTS = [
    ("evaluate", "[]", "the file is an empty list, not an object with train, val, test"),
    ("evaluate", "{}", "the file has no `train`, `val`, `test`"),
    ("evaluate", '{"train": {}, "val": {}, "test": {}}', "`train` has no `clean`, `perturbed`, `transfer`"),
    ("evaluate", "3", "the file is `3`, not an object"),
    ("robustness", "[]", "the file is an empty list, not an object with test_images, study_eps_255, clean"),
    ("robustness", "{}", "the file has no `test_images`, `study_eps_255`, `clean` and 2 more keys"),
    ("robustness", json.dumps({**ROBUSTNESS_REPORT, "robust": {"head": "0.5"}}), "`robust` has no `knn`"),
    ("robustness", json.dumps({**ROBUSTNESS_REPORT, "curve": {"eps_2": {"knn": None}}}), "`curve.eps_2.knn` is `null`, not an accuracy from 0 to 1"),
    ("robustness", json.dumps({**ROBUSTNESS_REPORT, "attacks": {"fgm": [0.5]}}), "`attacks.fgm` is a list, not an object"),
    ("robustness", json.dumps({**ROBUSTNESS_REPORT, "robust": {"knn": float("nan")}}), "`robust.knn` is `nan`, not an accuracy from 0 to 1"),
    ("robustness", json.dumps({**ROBUSTNESS_REPORT, "clean": {"knn": 1.5}}), "`clean.knn` is `1.5`, not an accuracy from 0 to 1"),
    ("robustness", json.dumps({**ROBUSTNESS_REPORT, "study_eps_255": 10**400}),
     "`study_eps_255` is `10000000000000000000...`, not a number"),
    ("robustness", "1" * 5000, "is not valid JSON"),
    ("robustness", "[" * 100_000 + "]" * 100_000, "is not valid JSON"),
    ("robustness", json.dumps({**ROBUSTNESS_REPORT, "curve": {"eps_2": {"knn": float("inf")}}}),
     "`curve.eps_2.knn` is `inf`, not an accuracy from 0 to 1"),
]


@pytest.mark.parametrize("stage, text, words", BAD_REPORTS, ids=[f"{stage} {text[:30]}" for stage, text, _ in BAD_REPORTS])
def test_a_per_seed_report_of_the_wrong_shape_is_one_line(tmp_path, stage, text, words):
    seeds_folder, robustness_folder = seed_files(tmp_path)
    path = (seeds_folder if stage == "evaluate" else robustness_folder) / "1.json"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)
    one_line(error, path, f"{stage}@{HEAD}-1", words)


def test_an_accuracy_edited_outside_0_to_1_is_refused(tmp_path):
    """A hand-edited score (1.7 for 0.17) was averaged into the aggregate as it stood."""
    seeds_folder, robustness_folder = seed_files(tmp_path)
    path = seeds_folder / "1.json"
    metrics = json.loads(path.read_text())
    metrics["test"]["clean"]["head"] = 1.7
    path.write_text(json.dumps(metrics))
    with pytest.raises(InputError) as error:
        read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)
    one_line(error, path, f"evaluate@{HEAD}-1", "`test.clean.head` is `1.7`, not an accuracy from 0 to 1")
    metrics["test"]["clean"]["head"] = 1   # a perfect score is one
    path.write_text(json.dumps(metrics))
    assert read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)[1]["test"]["clean"]["head"] == 1


def edit_report(path: Path, edit) -> None:
    tree = json.loads(path.read_text())
    edit(tree)
    path.write_text(json.dumps(tree))


@pytest.mark.parametrize("extra", ["hello", None, True, [1, 2], {"knn": "x"}])
def test_a_key_no_schema_names_is_left_out_of_the_aggregate(tmp_path, extra):
    """An added `"note": "hello"` failed aggregate with a ValueError; `null` became a NaN mean, `true` a 1.0."""
    seeds_folder, robustness_folder = seed_files(tmp_path)
    edit_report(seeds_folder / "1.json", lambda tree: tree.update(note=extra))
    edit_report(robustness_folder / "1.json", lambda tree: tree["clean"].update(note=extra))
    runs = read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)
    assert "note" not in runs[1] and "note" not in runs[1]["robustness"]["clean"]
    metrics = aggregate(runs)
    assert "note" not in metrics and metrics["robustness"]["clean"] == aggregate(
        read_runs(*seed_files(tmp_path / "clean"), [0, 1], HEAD))["robustness"]["clean"]


def test_scores_that_lost_some_head_accuracies_are_refused(tmp_path):
    """A report missing `test.perturbed.head` passed; summarize then failed with KeyError: 'head'."""
    seeds_folder, robustness_folder = seed_files(tmp_path)
    edit_report(seeds_folder / "1.json", lambda tree: tree["test"]["perturbed"].pop("head"))
    with pytest.raises(InputError) as error:
        read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)
    one_line(error, seeds_folder / "1.json", f"evaluate@{HEAD}-1", "some scores have a `head` accuracy and some have none")


def test_the_reference_methods_reports_must_have_its_heads_accuracy(tmp_path):
    """Every method is compared with the reference's head: without it summarize failed with a KeyError."""
    seeds_folder, robustness_folder = seed_files(tmp_path, method=REFERENCE_METHOD)

    def headless(tree):
        for scores in scores_of(tree):
            scores.pop("head", None)
    edit_report(robustness_folder / "0.json", headless)
    with pytest.raises(InputError) as error:
        read_runs(seeds_folder, robustness_folder, [0, 1], REFERENCE_METHOD)
    one_line(error, robustness_folder / "0.json", f"robustness@{REFERENCE_METHOD}-0",
             f"no `head` accuracy, which {REFERENCE_METHOD}'s head decides with")
    other_folder, other_robustness = seed_files(tmp_path / "other", method=ANGULAR)
    edit_report(other_robustness / "0.json", headless)
    for path in other_folder.glob("*.json"):
        edit_report(path, headless)
    assert "head" not in read_runs(other_folder, other_robustness, [0, 1], ANGULAR)[0]["test"]["clean"]


def test_reports_scored_by_another_k_nn_than_params_yamls_are_refused(tmp_path):
    """`knn.k: 5`, then `dvc repro -s summarize`: every "5-NN" of the summary labelled a 3-NN's numbers."""
    seeds_folder, robustness_folder = seed_files(tmp_path)
    with pytest.raises(InputError) as error:
        read_runs(seeds_folder, robustness_folder, [0, 1], HEAD, k=3)
    one_line(error, seeds_folder / "0.json", f"evaluate@{HEAD}-0", f"no `{KNN_K}`")   # written before the stamp
    for path in [*seeds_folder.glob("*.json"), *robustness_folder.glob("*.json")]:
        edit_report(path, lambda tree: tree.update({KNN_K: 3}))
    runs = read_runs(seeds_folder, robustness_folder, [0, 1], HEAD, k=3)
    assert KNN_K not in runs[0] and KNN_K not in runs[0]["robustness"]   # a stamp, not a metric
    with pytest.raises(InputError, match=rf"^{re.escape(str(seeds_folder / '0.json'))} was scored by a 3-NN, where "
                                         rf"params.yaml's knn.k is 5: rerun it with `dvc repro evaluate@{HEAD}-0` "
                                         r"\(without -s: it rescores what it reads first\)$"):
        read_runs(seeds_folder, robustness_folder, [0, 1], HEAD, k=5)
    edit_report(robustness_folder / "1.json", lambda tree: tree.update({KNN_K: 5}))
    with pytest.raises(InputError, match=f"1.json was scored by a 5-NN, where params.yaml's knn.k is 3: rerun it with "
                                         f"`dvc repro robustness@{HEAD}-1`"):
        read_runs(seeds_folder, robustness_folder, [0, 1], HEAD, k=3)
    path = tmp_path / f"{HEAD}.json"
    path.write_text(json.dumps(stamped({KNN_K: 3, **aggregate(runs)}, METHOD, HEAD)))
    assert KNN_K not in read_metrics(path, f"aggregate@{HEAD}", HEAD, k=3)
    with pytest.raises(InputError, match=f"was scored by a 3-NN, where params.yaml's knn.k is 5: rerun it with `dvc "
                                         f"repro aggregate@{HEAD}`"):
        read_metrics(path, f"aggregate@{HEAD}", HEAD, k=5)


def test_a_report_of_a_seed_no_longer_listed_is_not_read(tmp_path):
    seeds_folder, robustness_folder = seed_files(tmp_path)
    (seeds_folder / "1.json").write_text("[]")
    assert list(read_runs(seeds_folder, robustness_folder, [0], HEAD)) == [0]


def damaged_metrics(change):
    def damage(metrics):
        change(metrics)
        return metrics
    return damage


BAD_METRICS = [
    ("empty list", lambda metrics: [], "the file is an empty list, not an object with train, val, test, robustness, seeds"),
    ("empty object", lambda metrics: {}, "the file has no `train`, `val`, `test` and 2 more keys"),
    ("no test", damaged_metrics(lambda metrics: metrics.pop("test")), "the file has no `test`"),
    ("no robustness", damaged_metrics(lambda metrics: metrics.pop("robustness")), "the file has no `robustness`"),
    ("no seeds", damaged_metrics(lambda metrics: metrics.pop("seeds")), "the file has no `seeds`"),
    ("per-seed numbers", damaged_metrics(lambda metrics: metrics["test"]["clean"].update(knn=0.5)),
     "`test.clean.knn` is `0.5`, not an object with mean, std"),
    ("no std", damaged_metrics(lambda metrics: metrics["test"]["perturbed"]["head"].pop("std")),
     "`test.perturbed.head` has no `std`"),
    ("text mean", damaged_metrics(lambda metrics: metrics["robustness"]["robust"]["knn"].update(mean="high")),
     "`robustness.robust.knn.mean` is text, not an accuracy from 0 to 1"),
    ("seeds a fraction", damaged_metrics(lambda metrics: metrics.update(seeds=1.5)), "`seeds` is `1.5`, not a whole number"),
    ("a NaN mean", damaged_metrics(lambda metrics: metrics["test"]["clean"]["knn"].update(mean=float("nan"))),
     "`test.clean.knn.mean` is `nan`, not an accuracy from 0 to 1"),
    ("an accuracy above 1", damaged_metrics(lambda metrics: metrics["val"]["perturbed"]["knn"].update(mean=1.7)),
     "`val.perturbed.knn.mean` is `1.7`, not an accuracy from 0 to 1"),
]


@pytest.mark.parametrize("damage, words", [case[1:] for case in BAD_METRICS], ids=[case[0] for case in BAD_METRICS])
def test_metrics_without_the_expected_keys_are_one_line(tmp_path, damage, words):
    seeds_folder, robustness_folder = seed_files(tmp_path)
    path = tmp_path / f"reports/aggregate/{HEAD}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(damage(aggregate(read_runs(seeds_folder, robustness_folder, [0, 1], HEAD)))))
    with pytest.raises(InputError) as error:
        read_metrics(path, f"aggregate@{HEAD}")
    one_line(error, path, f"aggregate@{HEAD}", words)


def test_optional_and_free_keys():
    schema = {"a": NUMBER, "b": Optional({"c": NUMBER}), "d": Each(NUMBER)}
    assert tree_problem({"a": 1, "d": {}}, schema) is None
    assert tree_problem({"a": 1, "b": {"c": 2}, "d": {"x": 3, "y": 4.5}, "extra": "ignored"}, schema) is None
    assert tree_problem({"a": True, "d": {}}, schema) == "`a` is `true`, not a number"
    assert tree_problem({"a": 1, "b": {}, "d": {}}, schema) == "`b` has no `c`"
    assert tree_problem({"a": 1, "d": {"x": "3"}}, schema) == "`d.x` is text, not a number"


GOOD_PREDICTIONS = "actual,clean,perturbed\ncat,cat,dog\ndog,cat,dog\n"   # as stages/evaluate.py writes them


def predictions_of_a_run(folder: Path, content: str | bytes, recorded: str | bytes | None = None) -> Path:
    """`content` as a run's predictions table, beside the per-seed file that records the table `recorded` (default:
    this one), as stages/evaluate.py writes them."""
    path = folder / "0.csv"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    recorded = content if recorded is None else recorded
    digest = table_digest(recorded if isinstance(recorded, bytes) else recorded.encode())
    path.with_suffix(".json").write_text(json.dumps({RESULTS_RUN: RUN, PREDICTIONS: digest}))
    return path


def test_the_predictions_evaluate_writes_pass(tmp_path):
    correct = read_correct(predictions_of_a_run(tmp_path, GOOD_PREDICTIONS), f"evaluate@{RUN}")
    assert correct["clean"].tolist() == [True, False] and correct["perturbed"].tolist() == [False, True]


@pytest.mark.parametrize("content, words", [
    (bytes(range(256)) * 4, "is not a predictions table"),
    ("", "is not a predictions table"),
    ("a,b\n1,2\n", "is not a predictions table"),
    ("actual,clean,perturbed\n", "is not a predictions table"),
    (GOOD_PREDICTIONS + "cat,dog\n", "is not a predictions table"),
    (None, "not found"),
], ids=["random bytes", "empty", "other columns", "a header only", "a short row", "missing"])
def test_predictions_of_the_wrong_shape_are_one_line(tmp_path, content, words):
    path = tmp_path / "0.csv" if content is None else predictions_of_a_run(tmp_path, content)
    with pytest.raises(InputError) as error:
        read_correct(path, f"evaluate@{RUN}")
    one_line(error, path, f"evaluate@{RUN}", words, "dvc checkout --force")


@pytest.mark.parametrize("content, recorded", [
    (GOOD_PREDICTIONS[:GOOD_PREDICTIONS.rindex("dog,cat")], GOOD_PREDICTIONS),   # cut at a line's end
    ("actual,clean,perturbed\ncat,dog,dog\ndog,dog,dog\n", GOOD_PREDICTIONS),     # another run's, or edited
    (GOOD_PREDICTIONS, b"no table recorded"),
], ids=["cut short", "another run's", "not the recorded one"])
def test_a_predictions_table_its_run_does_not_record_is_one_line(tmp_path, content, recorded):
    """A table cut at a line's end, or another run's, was well-formed: summarize's bootstrap failed on 30 of 60
    images (a traceback), or paired another method's decisions with this method's mean, without a word."""
    path = predictions_of_a_run(tmp_path, content, recorded)
    with pytest.raises(InputError) as error:
        read_correct(path, f"evaluate@{RUN}")
    one_line(error, path, f"evaluate@{RUN}", "is not the predictions table that 0.json beside it records",
             f"`dvc checkout --force {path} {path.with_suffix('.json')}`")   # either may be the damaged one


def test_predictions_beside_no_per_seed_file_are_one_line(tmp_path):
    path = predictions_of_a_run(tmp_path, GOOD_PREDICTIONS)
    path.with_suffix(".json").unlink()
    with pytest.raises(InputError) as error:
        read_correct(path, f"evaluate@{RUN}")
    one_line(error, path.with_suffix(".json"), f"evaluate@{RUN}", "not found")


@pytest.mark.parametrize("text, words", [
    ("[]", "the file is an empty list, not an object with archive, md5, description"),
    ("{}", "the file has no `archive`, `md5`, `description` and 2 more keys"),
    ("null", "the file is `null`"),
    ('{"archive": "a.tar.gz", "md5": "0", "description": "d", "test_images": 6}', "the file has no `train_images`"),
    ('{"archive": 3, "md5": "0", "description": "d", "train_images": 1, "test_images": 6}', "`archive` is `3`, not text"),
])
def test_a_data_source_of_the_wrong_shape_is_one_line(tmp_path, text, words):
    """data/raw/source.json, which the pipeline tests' summarize reads as the download stage writes it."""
    path = tmp_path / "source.json"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read_json(path, "download", SOURCE)
    one_line(error, path, "download", words)


# --- the split and the perturbation plan ------------------------------------------------------

SIZES = {"training set": 50, "test set": 20}


def split_file(tmp_path: Path, damage=lambda indices: None) -> Path:
    """What the split stage writes (save_split: sorted, disjoint train and val), damaged by `damage`."""
    train, val = stratified_split(np.arange(50) % 10, 0.2, seed=0)
    indices = {"train": train, "val": val, "test": np.arange(20)}
    damage(indices)
    path = tmp_path / "data/split/indices.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, indices)
    return path


def test_the_split_the_split_stage_writes_passes(tmp_path):
    assert sorted(load_split_indices(split_file(tmp_path), SIZES)) == ["test", "train", "val"]


def set_to(key, value):
    return lambda indices: indices.__setitem__(key, value(indices))


BAD_SPLITS = [
    ("val a copy of train", set_to("val", lambda i: i["train"].copy()), "train and val share 10 images"),
    ("one image in both", set_to("val", lambda i: np.sort(np.append(i["val"], i["train"][0]))), "train and val share 1 images"),
    ("a repeated index", set_to("train", lambda i: np.sort(np.append(i["train"], i["train"][0]))),
     "train is not a sorted set of indices"),
    ("out of order", set_to("test", lambda i: i["test"][::-1].copy()), "test is not a sorted set of indices"),
    ("past the test set", set_to("test", lambda i: i["test"] + 1000), "test holds indices outside 0..19 (the official test set)"),
    ("negative", set_to("val", lambda i: i["val"] - 100), "val holds indices outside 0..49"),
    ("float indices", set_to("train", lambda i: i["train"].astype(np.float64)), "train holds floats"),
    ("2-d", set_to("test", lambda i: i["test"].reshape(4, 5)), "test has 2 dimensions"),
    ("no val", lambda indices: indices.pop("val"), "no val"),
]


@pytest.mark.parametrize("damage, words", [case[1:] for case in BAD_SPLITS], ids=[case[0] for case in BAD_SPLITS])
def test_a_split_that_leaks_or_does_not_index_the_data_is_one_line(tmp_path, damage, words):
    path = split_file(tmp_path, damage)
    with pytest.raises(InputError) as error:
        load_split_indices(path, SIZES)
    one_line(error, path, "split", "does not hold what split writes", words)


def write_foreign_member(path: Path) -> None:
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train.npy", b"no .npy header")   # np.load hands it over as bytes


def write_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def write_npy(path: Path) -> None:
    with path.open("wb") as file:
        np.save(file, np.arange(3))   # one bare array, as np.save writes it


@pytest.mark.parametrize("write, words", [
    (write_npy, "is not a readable .npz"),
    (lambda path: path.write_text("version https://git-lfs.github.com/spec/v1\n"), "is not a readable .npz"),
    (write_foreign_member, "is not a readable .npz (its member train is no array)"),
    (write_folder, "is a folder")], ids=["a .npy", "a git-lfs pointer", "a member that is no .npy", "a folder"])
def test_a_file_that_is_no_npz_is_one_line(tmp_path, write, words):
    path = split_file(tmp_path)
    write(path)
    with pytest.raises(InputError) as error:
        load_split_indices(path, SIZES)
    one_line(error, path, "split", words)


PLAN_IMAGES = {"train": 6, "val": 4, "test": 5}
PLAN_SEED, PLAN_SETTINGS = 7, PerturbSettings(p=0.5)


def plan_file(tmp_path: Path, damage=lambda arrays: None) -> Path:
    """What the perturb stage writes (make_plan, save_plans), damaged by `damage` on its arrays."""
    path = tmp_path / "data/perturb/plan.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_plans({split: make_plan(count, PLAN_SETTINGS, seed) for seed, (split, count) in enumerate(PLAN_IMAGES.items())},
               path, PLAN_SEED)
    arrays = dict(np.load(path))
    damage(arrays)
    save_npz(path, arrays)
    return path


def test_the_plan_the_perturb_stage_writes_passes(tmp_path):
    plans = load_plans(plan_file(tmp_path), PLAN_IMAGES, drawn_with=(PLAN_SEED, PLAN_SETTINGS))
    assert {split: len(plan.gates) for split, plan in plans.items()} == PLAN_IMAGES


@pytest.mark.parametrize("seed, settings, words", [
    (PLAN_SEED + 1, PLAN_SETTINGS, f"seeds.plan {PLAN_SEED}, not {PLAN_SEED + 1}"),
    (PLAN_SEED, replace(PLAN_SETTINGS, p=0.3), "perturb.p 0.5, not 0.3"),
    (PLAN_SEED, replace(PLAN_SETTINGS, noise_std=0.05), "perturb.noise.std 0.0125, not 0.05"),
], ids=["another seeds.plan", "another p", "another noise std"])
def test_a_plan_drawn_with_other_params_is_one_line(tmp_path, seed, settings, words):
    """A plan of another seeds.plan is well-formed: embed and evaluate perturbed other images without a word
    (perturbed 3-NN accuracy 0.533 -> 0.600 on the tiny project)."""
    path = plan_file(tmp_path)
    with pytest.raises(InputError) as error:
        load_plans(path, PLAN_IMAGES, drawn_with=(seed, replace(settings, fgm_eps=0.1)))   # FGM is not the plan's
    one_line(error, path, "perturb", "drawn with other params than params.yaml's", words)


BAD_PLANS = [
    ("NaN jitter factors", replaced("test.jitter_factors", lambda f: np.full_like(f, np.nan)),
     "test.jitter_factors holds 15 NaN or infinite values"),
    ("a NaN noise std", replaced("test.noise_std", lambda v: np.float64(np.nan)), "test.noise_std holds 1 NaN"),
    ("a fractional noise seed", replaced("val.noise_seed", lambda v: np.float64(1.5)), "val.noise_seed holds floats"),
    ("three noise seeds", replaced("val.noise_seed", lambda v: np.arange(3)), "val.noise_seed has 1 dimension (3,), not 0"),
    ("float gates", replaced("test.gates", lambda g: g.astype(np.float64)), "test.gates holds floats"),
    ("text p", replaced("train.p", lambda v: np.array("abc")), "train.p holds text"),
    ("gates of one kind", replaced("test.gates", lambda g: g[:, 0].copy()), "test.gates has 1 dimension"),
    ("a plan for 3 of the 5 test images", lambda arrays: arrays.update(
        {key: value[:3] for key, value in arrays.items() if key in ("test.gates", "test.jitter_factors")}),
     "test.gates has 3 test images, the split 5"),
    ("no test plan", lambda arrays: [arrays.pop(key) for key in list(arrays) if key.startswith("test.")], "no test.gates"),
]


@pytest.mark.parametrize("damage, words", [case[1:] for case in BAD_PLANS], ids=[case[0] for case in BAD_PLANS])
def test_a_plan_of_the_wrong_shape_or_with_nan_is_one_line(tmp_path, damage, words):
    path = plan_file(tmp_path, damage)
    with pytest.raises(InputError) as error:
        load_plans(path, PLAN_IMAGES)
    one_line(error, path, "perturb", "does not hold what perturb writes", words)


# --- training logs -----------------------------------------------------------------------------

def training_log(root: Path, files: dict[str, bytes | str], facts: str = f"run: {RUN}\ndevice: cpu\n") -> Path:
    """The log of RUN with these curves, and its params.yaml of `facts` as training writes it."""
    directory = root / "reports/training" / RUN
    directory.mkdir(parents=True)
    (directory / "params.yaml").write_text(facts)
    for name, content in files.items():
        path = directory / "plots/metrics" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return directory


GOOD_LR = "step\tlr\ttimestamp\n1\t0.1\t1\n2\t0.05\t2\n"
BAD_LOGS = [
    ("binary garbage", bytes(range(256)) * 8, "unreadable"),
    ("text garbage", "this is not a training log\n", "no `step` and `lr` columns"),
    ("a header only", "step\tlr\n", "no steps"),
    ("words for numbers", "step\tlr\nfirst\tfast\n", "a row without a whole `step` and a number `lr`"),
    ("a short row", "step\tlr\n1\t0.1\n2\n", "a row without a whole `step` and a number `lr`"),
    ("an infinite rate", "step\tlr\n1\tinf\n", "not finite"),
    ("a step before the first epoch", "step\tlr\n0\t0.1\n1\t0.1\n", "a step below epoch 1"),
    ("a repeated step", "step\tlr\n1\t0.1\n1\t0.1\n2\t0.05\n", "steps that do not rise epoch by epoch"),
]


def test_a_training_log_dvclive_writes_passes(tmp_path):
    directory = training_log(tmp_path, GOOD_CURVES)
    curves = read_training_curves(directory, f"train@{RUN}")
    assert curves["lr"][0].tolist() == [1, 2] and curves["train/loss"][1].tolist() == [2.5, 1.5]


def test_a_training_log_without_a_curve_every_training_logs_is_one_line(tmp_path):
    """Drawn without it, the figure showed the method as if it had never logged a training loss."""
    directory = training_log(tmp_path, {"lr": GOOD_LR, "train/acc": "step\tacc\n1\t0.1\n2\t0.2\n"})
    with pytest.raises(InputError) as error:
        read_training_curves(directory, f"train@{RUN}")
    one_line(error, directory, f"train@{RUN}", "lacks the train/loss curve every training logs")


@pytest.mark.parametrize("content, words", [case[1:] for case in BAD_LOGS], ids=[case[0] for case in BAD_LOGS])
def test_a_garbage_training_log_is_one_line(tmp_path, content, words):
    directory = training_log(tmp_path, {"train/loss": "step\tloss\n1\t2.5\n", "lr": content})
    with pytest.raises(InputError) as error:
        read_training_curves(directory)
    message = one_line(error, directory / "plots/metrics/lr.tsv", f"train@{RUN}", words)
    assert f"dvc checkout --force {directory}`" in message   # the output DVC tracks is the whole folder


def test_a_training_log_cut_short_in_every_curve_is_one_line(tmp_path):
    """Every curve ending at epoch 1 of a 2-epoch training was drawn as a 1-epoch training."""
    short = {name: "\n".join(text.splitlines()[:2]) + "\n" for name, text in GOOD_CURVES.items()}
    directory = training_log(tmp_path, short)
    (directory / "metrics.json").write_text(json.dumps({"train": {"loss": 1.5}, "step": 2}))
    with pytest.raises(InputError) as error:
        read_training_curves(directory)
    one_line(error, directory / "plots/metrics/train/loss.tsv", f"train@{RUN}",
             "epochs 1..1 where the log's metrics.json ends at epoch 2")
    (directory / "metrics.json").write_text(json.dumps({"train": {"loss": 1.5}, "step": 1}))
    assert len(read_training_curves(directory)["lr"][0]) == 1


@pytest.mark.parametrize("changed, words", [
    ({"train/acc": "step\tacc\n1\t0.1\n2\t2.0\n"}, "train/acc.tsv does not hold what train@{run} writes (a `acc` "
                                                      "outside 0..1)"),
    ({"train/loss": "step\tloss\n1\t2.5\n3\t1.5\n"}, "train/loss.tsv does not hold what train@{run} writes (steps "
                                                       "1..3 (2) where the training logged epochs 1..2 every epoch)"),
    ({"val/acc": "step\tacc\n2\t0.3\n7\t0.4\n"}, "val/acc.tsv does not hold what train@{run} writes (steps 2..7 (2) "
                                                   "where the training logged epochs 1..2)"),
])
def test_a_training_log_whose_epochs_or_accuracies_no_training_logs_is_one_line(tmp_path, changed, words):
    """A missing epoch, an epoch past the training's last, an accuracy of 2.0: each was drawn without a word."""
    directory = training_log(tmp_path, {**GOOD_CURVES, **changed})
    with pytest.raises(InputError) as error:
        read_training_curves(directory)
    one_line(error, directory / "plots/metrics" / f"{next(iter(changed))}.tsv", f"train@{RUN}", words.format(run=RUN))


GOOD_CURVES = {"lr": GOOD_LR, "train/loss": "step\tloss\n1\t2.5\n2\t1.5\n", "train/acc": "step\tacc\n1\t0.1\n2\t0.2\n"}


@pytest.mark.parametrize("facts, words", [
    (f"run: {ANGULAR}-0\ndevice: cpu\n", f"the log of {ANGULAR}-0, not of {RUN}"),   # another run's, copied over
    ("device: cpu\n", "no `run`"),
    ("[run, 1]\n", "no `run`"),
    ("run: [unclosed\n", "unreadable: "),
    (None, "missing")])
def test_a_training_log_of_another_run_or_of_none_is_one_line(tmp_path, facts, words):
    directory = training_log(tmp_path, GOOD_CURVES, facts or "")
    if facts is None:
        (directory / "params.yaml").unlink()
    with pytest.raises(InputError) as error:
        read_training_curves(directory, f"train@{RUN}")
    message = one_line(error, directory / "params.yaml", f"train@{RUN}", words)
    assert f"dvc checkout --force {directory}`" in message   # the output DVC tracks is the whole folder


def test_a_training_log_without_curves_is_one_line(tmp_path):
    directory = training_log(tmp_path, {})
    (directory / "metrics.json").write_text("{}")
    with pytest.raises(InputError) as error:
        read_training_curves(directory, f"train@{RUN}")
    one_line(error, directory, f"train@{RUN}", "holds no training curves")


# --- checkpoints -------------------------------------------------------------------------------

EXPECTED = ModelConfig(width=4, embedding_dim=16, dropout=0.0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """models/<run>.pt of the expected config and of another width, embedding size and class count."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    made = {}
    for name, config, classes in [(f"{HEAD}-0", EXPECTED, 10), ("wide-0", ModelConfig(8, 16, 0.0), 10),
                                  ("embedding-0", ModelConfig(4, 32, 0.0), 10), ("five-0", EXPECTED, 5),
                                  ("dropout-0", ModelConfig(4, 16, 0.25), 10), ("everything-0", ModelConfig(8, 32, 0.0), 5)]:
        made[name] = folder / f"{name}.pt"
        save_model(config.build(classes), made[name])
    diverged = EXPECTED.build(10)   # what a diverged training would leave, were it written
    with torch.no_grad():
        diverged.head.weight[0, 0] = float("nan")
    made["diverged-0"] = folder / "diverged-0.pt"
    made["text-width-0"] = folder / "text-width-0.pt"
    checkpoint = torch.load(made[f"{HEAD}-0"], weights_only=True)
    checkpoint["config"]["width"] = "4"
    torch.save(checkpoint, made["text-width-0"])
    save_model(diverged, made["diverged-0"])
    return made


def test_a_checkpoint_of_the_expected_model_loads(checkpoints):
    model, _ = load_model(checkpoints[f"{HEAD}-0"], expect=EXPECTED, num_classes=10)
    assert isinstance(model, CifarResNet18) and model.config["num_classes"] == 10
    load_model(checkpoints["five-0"])   # nothing expected: any checkpoint of this project


@pytest.mark.parametrize("name, words", [
    ("wide-0", "has width 8, params.yaml's model.width 4:"),
    ("embedding-0", "has embedding size 32, params.yaml's model.embedding_dim 16:"),
    ("five-0", "has 5 classes, the data 10:"),
    ("dropout-0", "has dropout 0.25, params.yaml's model.dropout 0.0:"),
    ("text-width-0", "has width '4', params.yaml's model.width 4:"),   # not "width 4, ... 4", which reads as equal
    ("everything-0", "has width 8, params.yaml's model.width 4; embedding size 32, params.yaml's model.embedding_dim 16; "
                     "5 classes, the data 10:"),
])
def test_a_checkpoint_of_another_model_is_one_line(checkpoints, name, words):
    with pytest.raises(InputError) as error:
        load_model(checkpoints[name], expect=EXPECTED, num_classes=10)
    one_line(error, checkpoints[name], f"train@{name}", words)


def test_a_checkpoint_with_nan_weights_is_one_line(checkpoints):
    with pytest.raises(InputError) as error:
        load_model(checkpoints["diverged-0"], expect=EXPECTED, num_classes=10)
    one_line(error, checkpoints["diverged-0"], "train@diverged-0", "has NaN or infinite weights (in 1 tensor, head.weight first)")


def rewritten(good: Path, folder: Path, name: str, change) -> Path:
    """A copy of the checkpoint `good` whose state_dict `change` edited, saved as torch.save would."""
    checkpoint = torch.load(good, weights_only=True)
    change(checkpoint["state_dict"])
    torch.save(checkpoint, folder / f"{name}.pt")
    return folder / f"{name}.pt"


def retyped(dtype, which=lambda key, value: value.is_floating_point()):
    return lambda state: state.update({key: value.to(dtype) for key, value in state.items() if which(key, value)})


@pytest.mark.parametrize("change, words", [
    (retyped(torch.float16), "stores normalize.mean as torch.float16, not torch.float32"),
    (retyped(torch.bfloat16, lambda key, value: key == "head.weight"), "stores head.weight as torch.bfloat16"),
    (retyped(torch.float64, lambda key, value: key.endswith("running_var")), "as torch.float64, not torch.float32"),
    (retyped(torch.int64, lambda key, value: key.endswith("running_var")), "as torch.int64, not torch.float32"),
    (lambda state: state["normalize.mean"].fill_(0.9), "has another normalize.mean than the model's fixed [0.4914, "),
    (lambda state: state["normalize.std"].mul_(1.0000001), "has another normalize.std than the model's fixed [0.247, "),
])
def test_a_checkpoint_no_training_writes_is_one_line_not_cast(checkpoints, tmp_path, change, words):
    """load_state_dict would cast float16 weights into the model, or take other normalization constants, and the
    stages would score a model that was never trained."""
    path = rewritten(checkpoints[f"{HEAD}-0"], tmp_path, f"{HEAD}-0", change)
    with pytest.raises(InputError) as error:
        load_model(path, expect=EXPECTED, num_classes=10)
    one_line(error, path, f"train@{HEAD}-0", words)


def test_a_rewritten_checkpoint_that_training_could_have_written_loads(checkpoints, tmp_path):
    path = rewritten(checkpoints[f"{HEAD}-0"], tmp_path, f"{HEAD}-0", lambda state: state["head.bias"].add_(1.0))
    model, _ = load_model(path, expect=EXPECTED, num_classes=10)
    assert torch.equal(model.head.bias, torch.load(path, weights_only=True)["state_dict"]["head.bias"])


def test_the_class_count_alone_can_be_expected(checkpoints):
    with pytest.raises(InputError, match="has 5 classes, the data 10"):
        load_model(checkpoints["five-0"], num_classes=10)
    load_model(checkpoints["wide-0"], num_classes=10)


def test_a_checkpoint_of_finite_weights_that_gives_nan_is_one_line(checkpoints, tmp_path):
    """A negative batch-norm variance is finite, and makes every output NaN: the embeddings, the scores and the
    attacks' robust accuracy would all be chance (10%), published unsaid."""
    def negative_variance(state):
        key = next(key for key in state if key.endswith("running_var"))
        state[key] = -state[key]
    path = rewritten(checkpoints[f"{HEAD}-0"], tmp_path, f"{HEAD}-0", negative_variance)
    with pytest.raises(InputError) as error:
        load_model(path, expect=EXPECTED, num_classes=10)
    one_line(error, path, f"train@{HEAD}-0", "gives NaN or infinite outputs on a grey image")
