"""End to end: the real dvc.yaml on a tiny generated archive, through the dvc CLI."""
from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from robust_cifar.params import get_dotted, set_dotted
from robust_cifar.reporting.summarize import HEADLINE_SOURCES
from robust_cifar.training.methods.registry import REFERENCE_METHOD, REGISTRY, label
from stages import paths
from tests.pipeline_project import (ALL_STAGES, METHODS, PARAMS, ROOT, SEED, covers, dag_edges, declared_params,
                                    downstream_closure, dvc, ran_stages, run, stages_of, stale_stages,
                                    start_build, wait_for_build)
from tests.methods import ANGULAR, PERTURBED_ANGULAR


@pytest.fixture
def project(reproduced_project):
    return reproduced_project


RUN_STAGES = ("train", "embed", "evaluate", "robustness")   # one per method and seed; the others are one per method


def methods(stage: str, *names: str) -> tuple[str, ...]:
    suffix = f"-{SEED}" if stage in RUN_STAGES else ""
    return tuple(f"{stage}@{name}{suffix}" for name in (names or METHODS))


# For every key in params.yaml, the stages whose own dependencies it is (dvc status after the
# edit; check_params, which depends on the whole file, comes on top); the test adds everything
# downstream from the DAG and compares with EXPECTED_CLOSURE.
EVALUATION = (set(methods("embed")) | set(methods("evaluate")) | set(methods("robustness")) | set(methods("aggregate"))
              | set(methods("umap_plot")) | {"summarize", "examples"})
EVERYTHING_FROM_TRAINING = set(methods("train")) | EVALUATION | {"curves"}


def chain(method: str, first: str = "train") -> set[str]:
    stages = ("train", "embed", "evaluate", "robustness", "aggregate")
    # curves draws every run's training logs
    return ({methods(stage, method)[0] for stage in stages[stages.index(first):]} | {f"umap_plot@{method}", "summarize"}
            | ({"curves"} if first == "train" else set()))


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys += leaf_keys(value, f"{dotted}.") if isinstance(value, dict) else [dotted]
    return keys


ATTACK_KEYS = [f"attack.{key}" for key in leaf_keys(yaml.safe_load(open(ROOT / "params.yaml"))["attack"])]


def own_section(method: str) -> set[str]:
    return set(methods("train", method)) | set(methods("embed", method)) | set(methods("robustness", method))


PERTURBATION_KEYS = ("p", "jitter.brightness", "jitter.contrast", "jitter.saturation", "noise.std", "noise.fraction")
DIRECT = {
    "data.url": {"download"}, "data.md5": {"download"}, "data.archive": {"download"}, "data.archive_md5": {"download"},
    # summarize reports the preset, the model, the epochs and the split in its provenance
    "preset": {"summarize"},
    **{f"split.{key}": {"split", "summarize"} for key in ("train_fraction", "val_per_class", "test_per_class")},
    # the stages that apply the plan check it was drawn with these (a plan of other params was applied unsaid)
    "seeds.split": {"split"}, "seeds.plan": {"perturb", "examples"} | set(methods("embed")),
    "seeds.umap": set(methods("umap_plot")),
    "seeds.figures": set(methods("umap_plot")) | set(methods("aggregate")) | {"curves", "examples"},
    # the model stages also check each checkpoint they load against these
    **{f"model.{key}": set(methods("train")) | set(methods("embed")) | set(methods("robustness"))
       | {"summarize", "examples"} for key in ("width", "embedding_dim", "dropout")},
    "train.epochs": set(methods("train")) | {"summarize"},
    **{f"train.{key}": set(methods("train")) for key in
       ("lr", "momentum", "weight_decay", "lr_factor", "lr_patience", "lr_schedule_on", "val_every",
        "perturbed_val_every")},
    # the device and the CPU threads change the bits of every stage that computes with torch
    **{f"compute.{key}": (set(methods("train")) | set(methods("embed")) | set(methods("evaluate"))
                          | set(methods("robustness")) | {"examples"}) for key in ("device", "threads")},
    **{f"compute.{key}": set(methods("train")) | set(methods("embed")) | set(methods("robustness"))
       for key in ("fast", "eval_batch_size", "deterministic", "cuda_graphs")},
    # every attack setting (the registry's sections) is read by the robustness stages alone
    **{key: set(methods("robustness")) for key in ATTACK_KEYS},
    **{f"perturb.{key}": {"perturb", "examples"} | set(methods("embed")) for key in PERTURBATION_KEYS},
    "perturb.p": {"perturb", "examples", "summarize"} | set(methods("embed")),   # summarize states it
    "perturb.fgm.eps_255": {"examples"} | set(methods("embed")) | set(methods("robustness")),
    # a method's own section: the stages that build the method (train, and embed and robustness for its scores)
    **{f"{method}.{key}": own_section(method) for method in METHODS for key in leaf_keys(PARAMS[method])},
    # aggregate and summarize: each report's k-NN must be it (and summarize names it: "3-NN")
    "knn.k": set(methods("evaluate")) | set(methods("robustness")) | set(methods("aggregate")) | {"summarize"},
    **{f"umap.{key}": set(methods("umap_plot")) for key in ("fit_samples", "plot_samples", "n_neighbors", "min_dist")},
}

# The narrowness promises, spelled out: what each edit reruns in full.
def method_closure(method: str) -> set[str]:
    """An edit of a method's own section retrains that method alone (a method's training eps or steps,
    not the evaluation's); the reference's model is also every other method's transfer attack."""
    if method == REFERENCE_METHOD:
        return EVERYTHING_FROM_TRAINING - set(methods("train", *(m for m in METHODS if m != method)))
    return chain(method)


EXPECTED_CLOSURE = {
    # the last key of each method's section (a training attack's, where it has one)
    **{f"{method}.{leaf_keys(PARAMS[method])[-1]}": method_closure(method) for method in METHODS},
    "perturb.fgm.eps_255": EVALUATION,
    # the perturbation plan reaches embed and what follows it; robustness embeds its own neighbours, attacks afresh
    "perturb.p": {"perturb"} | EVALUATION - set(methods("robustness")),
    "train.lr": EVERYTHING_FROM_TRAINING,
    "knn.k": set(methods("evaluate")) | set(methods("robustness")) | set(methods("aggregate")) | {"summarize"},
    "attack.pgd.steps": set(methods("robustness")) | set(methods("aggregate")) | {"summarize"},
    "attack.eps_255": set(methods("robustness")) | set(methods("aggregate")) | {"summarize"},
    "umap.min_dist": set(methods("umap_plot")),
    "seeds.plan": {"perturb"} | EVALUATION - set(methods("robustness")),
    "data.archive": ALL_STAGES - {"check_params"},
}


def edited(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value / 2 + 0.01
    return f"{value}-edited" if value else "edited"


def test_every_output_exists_and_metrics_are_accuracies(project):
    for method in METHODS:
        run = f"{method}-{SEED}"
        for path in (f"models/{run}.pt", f"data/embeddings/{run}.npz", f"reports/umap/{method}.png",
                     f"reports/training/{run}/metrics.json", f"reports/training/{run}/plots/metrics/val/acc.tsv",
                     f"reports/seeds/{method}/{SEED}.json", f"reports/seeds/{method}/{SEED}.csv",
                     f"reports/predictions/{method}.csv"):
            assert (project / path).stat().st_size > 0, path
        per_seed = json.loads((project / f"reports/seeds/{method}/{SEED}.json").read_text())
        metrics = json.loads((project / f"reports/aggregate/{method}.json").read_text())
        assert metrics["seeds"] == 1
        for split in ("train", "val", "test"):
            for condition in ("clean", "perturbed", "transfer") + (("jitter", "noise", "fgm") if split == "test" else ()):
                entry = metrics[split][condition]
                assert set(entry) == ({"head", "knn"} if REGISTRY[method].OBJECTIVE.has_head else {"knn"})
                for decision, value in entry.items():
                    # one seed: the mean is that seed's accuracy and there is no spread
                    assert value == {"mean": per_seed[split][condition][decision], "std": 0.0}
                    assert 0.0 <= value["mean"] <= 1.0
    for figure in ("reports/training_curves.png", "reports/examples.png", "reports/accuracy.png",
                   "reports/robustness_curve.png"):
        assert (project / figure).stat().st_size > 0, figure
    summary = json.loads((project / "reports/summary.json").read_text())
    assert [row["method"] for row in summary["test"]] == list(METHODS)
    for column in ("head clean", "head perturbed", "head transfer", "head drop",
                   "3-NN clean", "3-NN perturbed", "3-NN transfer", "3-NN drop"):
        assert all(column in row for row in summary["test"])
    assert summary["test"][2]["head clean"] == "n/a"
    assert {"jitter only", "noise only", "fgm only"} <= set(summary["test_single_perturbation"][0])
    report = (project / "reports/summary.md").read_text()
    assert f"| {ANGULAR}" in report
    assert len(summary["verdict"]) == len(METHODS) - 1
    assert all("train more seeds" in sentence for sentence in summary["verdict"])   # one seed: no interval
    assert all(f"- {sentence}" in report for sentence in summary["verdict"])


def test_second_repro_runs_nothing_and_status_is_clean(project):
    assert stale_stages(project) == set()
    assert ran_stages(dvc(project, "repro").stdout) == set()


@pytest.mark.long(seconds=35)
def test_every_param_makes_exactly_its_stages_stale(project):
    """A table, checked key by key against the params each stage declares (DVC's parsed dvc.yaml): a new
    param cannot over- or under-invalidate silently. Then DVC itself, edit by edit, for the keys whose
    whole rerun is spelled out: `dvc status` agrees with the declarations, and the DAG adds the rest."""
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    # the lists that shape the matrix have their own tests
    keys = [key for key in leaf_keys(params) if key not in ("methods", "seeds.train")]
    assert set(keys) == set(DIRECT), "every params.yaml key needs a row in DIRECT"
    declared = {name: declared_params(stage) for name, stage in stages_of(project).items()}
    reading = lambda key: {name for name, entries in declared.items() if any(covers(entry, key) for entry in entries)}
    for key in keys:
        assert reading(key) - {"check_params"} == DIRECT[key], key
    edges = dag_edges(project)
    try:
        for key in EXPECTED_CLOSURE:
            changed = yaml.safe_load(original)
            set_dotted(changed, key, edited(get_dotted(changed, key)))
            params_path.write_text(yaml.safe_dump(changed, sort_keys=False))
            direct = stale_stages(project) - {"check_params"}
            assert direct == DIRECT[key], key
            assert downstream_closure(project, direct, edges) == EXPECTED_CLOSURE[key], key
    finally:
        params_path.write_text(original)
    assert stale_stages(project) == set()


@pytest.mark.long(seconds=85)
def test_exp_run_alpha_retrains_only_the_angular_chain(project, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True)
    result = dvc(copy, "exp", "run", "-S", f"{ANGULAR}.alpha=40")
    # check_params reruns on any edit of params.yaml, but its output is unchanged, so nothing follows from it
    assert ran_stages(result.stdout) == chain(ANGULAR) | {"check_params"}, result.stdout
    (shown,) = json.loads(dvc(copy, "metrics", "show", "--json").stdout).values()   # the workspace's
    assert set(shown["data"]["reports/metrics.json"]["data"][label(ANGULAR)]) >= {"clean", "perturbed", "robust"}


def test_the_robust_3nn_embeds_its_own_fp32_neighbours_not_the_embed_stages(project, tmp_path):
    """The embed stage's embeddings are bf16 where compute.fast is on; the robustness stage, fp32 throughout,
    embeds the clean training images (the 3-NN's neighbours) itself: the same report without embed's file."""
    copy = Path(shutil.copytree(project, tmp_path / "project", symlinks=True))
    report = paths.robustness(ANGULAR, SEED)
    (copy / paths.embeddings(ANGULAR, SEED)).unlink()
    (copy / report).unlink()
    run(copy, sys.executable, "-m", "stages.robustness", ANGULAR, str(SEED))
    assert json.loads((copy / report).read_text()) == json.loads((project / report).read_text())


def test_the_headline_metrics_are_each_methods_own_decision_in_percent(project):
    headline = json.loads((project / "reports/metrics.json").read_text())
    assert list(headline) == [label(method) for method in METHODS]
    for method in METHODS:
        aggregated = json.loads((project / f"reports/aggregate/{method}.json").read_text())
        decision = "head" if REGISTRY[method].OBJECTIVE.has_head else "knn"
        for key, (section, condition) in HEADLINE_SOURCES.items():
            assert headline[label(method)][key] == round(100 * aggregated[section][condition][decision]["mean"], 2)


# An experiment's row names it `└── 1a2b3c4 [name]`: with a name of 16 characters, 21 more than `workspace`
EXPERIMENT_ROW_ROOM = 21


def test_the_readmes_exp_show_lists_every_methods_headline_within_200_columns(project):
    (command,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("dvc exp show")]
    assert len(command) <= 70
    shown = dvc(project, *shlex.split(command)[1:], "--no-pager", env={"COLUMNS": "200"}).stdout
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 200 - EXPERIMENT_ROW_ROOM and "…" not in shown, shown
    header = next(line for line in lines if "Experiment" in line).split()
    # State: a failed experiment keeps the numbers of the run it started from
    assert header == ["Experiment", "State"] + [f"{label(method)}.{key}" for method in METHODS
                                                for key in ("clean", "robust")]
    workspace = next(line for line in lines if line.split()[:1] == ["workspace"]).split()[2:]
    headline = json.loads((project / "reports/metrics.json").read_text())
    assert [float(value) for value in workspace] == [headline[label(method)][key] for method in METHODS
                                                     for key in ("clean", "robust")]


def test_adding_a_seed_adds_stages_and_reruns_only_what_summarises_them(project):
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["seeds"]["train"] = [SEED, SEED + 1]
    try:
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        new_runs = {f"{stage}@{method}-{SEED + 1}" for stage in RUN_STAGES for method in METHODS}
        assert stale_stages(project) - {"check_params"} == new_runs | set(methods("aggregate")) | {"summarize"}
    finally:
        params_path.write_text(original)


def test_removing_a_method_reruns_only_the_summaries(project):
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["methods"] = [method for method in METHODS if method != PERTURBED_ANGULAR]
    try:
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        assert stale_stages(project) - {"check_params"} == {"summarize", "curves"}
    finally:
        params_path.write_text(original)


@pytest.mark.long(seconds=75)
def test_a_dropped_methods_outputs_go_and_listing_it_again_restores_them_without_rerunning(project):
    """DVC left them: `dvc plots show` drew them beside the run's, and a publication copied them."""
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["methods"] = [method for method in METHODS if method != PERTURBED_ANGULAR]
    outputs = [project / f"models/{PERTURBED_ANGULAR}-{SEED}.pt", project / f"reports/umap/{PERTURBED_ANGULAR}.png",
               project / f"reports/seeds/{PERTURBED_ANGULAR}/{SEED}.json"]
    try:
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        dropped = dvc(project, "repro")
        assert ran_stages(dropped.stdout) == {"check_params", "summarize", "curves"}
        assert "removed 10 outputs of methods or seeds params.yaml no longer lists" in dropped.stdout
        assert not any(path.exists() for path in outputs)
    finally:
        params_path.write_text(original)
    listed = dvc(project, "repro")
    assert ran_stages(listed.stdout) == {"check_params"}   # the rest from DVC's run cache
    assert all(path.exists() for path in outputs) and stale_stages(project) == set()


# The harness: one build of the tiny pipeline per run, which every worker's slow tests wait for.

def test_a_failed_build_fails_every_test_waiting_for_it_saying_why(tmp_path):
    destination = tmp_path / "project"
    destination.mkdir()   # the builder cannot copy the project there: it fails at once
    builder = start_build(destination)
    assert start_build(destination) is None   # claimed: another worker waits for this build
    for _ in range(2):   # each waiting test is told, none waits longer
        with pytest.raises(pytest.fail.Exception, match="FileExistsError"):
            wait_for_build(destination, timeout=120)
    builder.wait()


def test_a_killed_builder_ends_the_wait_with_its_exit_code(tmp_path):
    builder = start_build(tmp_path / "project")
    builder.kill()
    with pytest.raises(pytest.fail.Exception, match="exited with code -9"):
        wait_for_build(tmp_path / "project", timeout=120)
