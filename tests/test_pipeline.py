"""End to end: the real dvc.yaml on a tiny generated archive, through the dvc CLI."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.pipeline_project import (ALL_STAGES, METHODS, downstream_closure, dvc, ran_stages, set_param,
                                    stale_stages)


@pytest.fixture
def project(reproduced_project):
    return reproduced_project


def methods(stage: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{stage}@{name}" for name in (names or METHODS))


# For every key in params.yaml, the stages whose own dependencies it is (dvc status after the
# edit); the test adds everything downstream from the DAG and compares with EXPECTED_CLOSURE.
EVERYTHING_FROM_TRAINING = set(methods("train")) | set(methods("embed")) | set(methods("eval")) | set(
    methods("umap")) | {"summarize", "examples"}
EVALUATION = set(methods("embed")) | set(methods("eval")) | set(methods("umap")) | {"summarize", "examples"}


def angular_chain(first: str) -> set[str]:
    chain = ("train", "embed", "eval", "umap")
    return {f"{stage}@angular" for stage in chain[chain.index(first):]} | {"summarize"}


DIRECT = {
    "data.url": {"download"}, "data.md5": {"download"}, "data.archive": {"download"}, "data.archive_md5": {"download"},
    "split.train_fraction": {"split"},
    "seeds.split": {"split"}, "seeds.train": set(methods("train")), "seeds.plan": {"perturb"},
    "seeds.umap": set(methods("umap")),
    **{f"model.{key}": set(methods("train")) for key in ("width", "embedding_dim", "dropout")},
    **{f"train.{key}": set(methods("train")) for key in
       ("epochs", "lr", "momentum", "weight_decay", "lr_factor", "lr_patience", "val_every")},
    "train.batch_size": set(methods("train", "baseline", "adversarial")),
    "compute.device": set(methods("train")) | set(methods("embed")) | set(methods("eval")) | {"examples"},
    "compute.fast": set(methods("train")) | set(methods("embed")),
    "compute.eval_batch_size": set(methods("train")) | set(methods("embed")),
    "perturb.p": {"perturb", "train@adversarial"},
    **{f"perturb.jitter.{key}": {"perturb", "train@adversarial"} for key in ("brightness", "contrast", "saturation")},
    **{f"perturb.noise.{key}": {"perturb", "train@adversarial"} for key in ("std", "fraction")},
    "perturb.fgm.eps": {"train@adversarial", "examples"} | set(methods("embed")),
    "angular.alpha": {"train@angular"}, "angular.per_class": {"train@angular"},
    "angular.attack_temperature": {"embed@angular"},
    "knn.k": set(methods("eval")),
    **{f"umap.{key}": set(methods("umap")) for key in ("fit_samples", "plot_samples", "n_neighbors", "min_dist")},
}

# The narrowness promises, spelled out: what each edit reruns in full.
EXPECTED_CLOSURE = {
    "angular.alpha": angular_chain("train"),
    "angular.per_class": angular_chain("train"),
    "angular.attack_temperature": angular_chain("embed"),
    "perturb.fgm.eps": {"train@adversarial"} | EVALUATION,
    "train.lr": EVERYTHING_FROM_TRAINING,
    "train.batch_size": EVERYTHING_FROM_TRAINING - {"train@angular"},
    "knn.k": set(methods("eval")) | {"summarize"},
    "umap.min_dist": set(methods("umap")),
    "seeds.plan": {"perturb"} | EVALUATION,
    "data.archive": ALL_STAGES,
}


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys += leaf_keys(value, f"{dotted}.") if isinstance(value, dict) else [dotted]
    return keys


def edited(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value / 2 + 0.01
    return f"{value}-edited" if value else "edited"


def test_every_output_exists_and_metrics_are_accuracies(project):
    for method in METHODS:
        for path in (f"models/{method}.pt", f"data/embeddings/{method}.npz", f"reports/umap/{method}.png",
                     f"reports/training/{method}.csv", f"reports/validation/{method}.csv",
                     f"reports/predictions/{method}.csv"):
            assert (project / path).stat().st_size > 0, path
        metrics = json.loads((project / f"reports/metrics/{method}.json").read_text())
        for split in ("train", "val", "test"):
            for condition in ("clean", "perturbed", "transfer") + (("jitter", "noise", "fgm") if split == "test" else ()):
                entry = metrics[split][condition]
                assert set(entry) == ({"knn"} if method == "angular" else {"head", "knn"})
                assert all(0.0 <= value <= 1.0 for value in entry.values())
    summary = json.loads((project / "reports/summary.json").read_text())
    assert [row["method"] for row in summary["test"]] == list(METHODS)
    for column in ("head clean", "head perturbed", "head transfer", "head drop",
                   "3-NN clean", "3-NN perturbed", "3-NN transfer", "3-NN drop"):
        assert all(column in row for row in summary["test"])
    assert summary["test"][2]["head clean"] == "n/a"
    assert {"jitter only", "noise only", "fgm only"} <= set(summary["test_single_perturbation"][0])
    assert "| angular" in (project / "reports/summary.md").read_text()


def test_second_repro_runs_nothing_and_status_is_clean(project):
    assert stale_stages(project) == set()
    assert ran_stages(dvc(project, "repro").stdout) == set()


def test_every_param_makes_exactly_its_stages_stale(project):
    """A table, checked key by key: a new param cannot over- or under-invalidate silently."""
    params_path = project / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    assert set(leaf_keys(params)) == set(DIRECT), "every params.yaml key needs a row in DIRECT"
    try:
        for key in leaf_keys(params):
            changed = yaml.safe_load(original)
            node = changed
            for part in key.split(".")[:-1]:
                node = node[part]
            set_param(changed, key, edited(node[key.split(".")[-1]]))
            params_path.write_text(yaml.safe_dump(changed, sort_keys=False))
            direct = stale_stages(project)
            assert direct == DIRECT[key], key
            if key in EXPECTED_CLOSURE:
                assert downstream_closure(project, direct) == EXPECTED_CLOSURE[key], key
    finally:
        params_path.write_text(original)
    assert stale_stages(project) == set()


def test_exp_run_alpha_retrains_only_the_angular_chain(project, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True)
    result = dvc(copy, "exp", "run", "-S", "angular.alpha=40")
    assert ran_stages(result.stdout) == angular_chain("train"), result.stdout
    shown = dvc(copy, "metrics", "show", "--json").stdout
    assert "angular.json" in shown
