import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robust_cifar.methods import METHODS
from robust_cifar.params import (AngularConfig, ComputeConfig, DataConfig, ModelConfig, Params, ParamsError,
                                 TrainConfig, UmapConfig, load_params)
from robust_cifar.perturb import PerturbSettings

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PARAMS.read_text())


def params_with(raw: dict, key: str, value) -> Params:
    edited = copy.deepcopy(raw)
    *parents, last = key.split(".")
    node = edited
    for part in parents:
        node = node[part]
    node[last] = value
    return Params(edited)


def test_every_accessor_of_the_real_params_succeeds():
    params = load_params(PARAMS)
    assert isinstance(params.data(), DataConfig)
    assert 0 < params.train_fraction() < 1
    for name in ("split", "train", "plan", "umap"):
        assert isinstance(params.seed(name), int)
    assert isinstance(params.model(), ModelConfig)
    for method in METHODS:
        assert params.method(method) == method
        config = params.train(method)
        assert isinstance(config, TrainConfig)
        assert isinstance(config.epochs, int) and config.epochs > 0
        assert isinstance(config.lr, float)
    assert params.train("baseline").batch_size > 0
    assert params.train("angular").batch_size == 0  # angular forms its own batches
    assert params.device() in ("auto", "cpu") or params.device().startswith("cuda")
    assert isinstance(params.compute(), ComputeConfig)
    settings = params.perturb()
    assert isinstance(settings, PerturbSettings) and settings.fgm_eps == params.fgm_eps() > 0
    assert params.perturb(with_fgm=False).fgm_eps == 0.0
    assert isinstance(params.angular(), AngularConfig)
    assert params.attack_temperature() > 0
    assert params.knn_k() >= 1
    assert isinstance(params.umap(), UmapConfig)


def test_real_values_are_read_through(raw):
    params = Params(raw)
    assert params.model() == ModelConfig(raw["model"]["width"], raw["model"]["embedding_dim"],
                                         float(raw["model"]["dropout"]))
    assert params.angular().alpha == float(raw["angular"]["alpha"])
    assert isinstance(params.angular().alpha, float)  # ints in yaml become floats where a real is meant
    assert params.knn_k() == raw["knn"]["k"]
    assert params.train("baseline").batch_size == raw["train"]["batch_size"]


# (dotted key, bad value, accessor, words that must say what is allowed)
BAD_VALUES = [
    ("split.train_fraction", 0, lambda p: p.train_fraction(), "strictly between 0 and 1"),
    ("split.train_fraction", 1, lambda p: p.train_fraction(), "strictly between 0 and 1"),
    ("split.train_fraction", 1.5, lambda p: p.train_fraction(), "strictly between 0 and 1"),
    ("train.epochs", 0, lambda p: p.train("baseline"), "whole number > 0"),
    ("train.epochs", -1, lambda p: p.train("baseline"), "whole number > 0"),
    ("train.epochs", 2.5, lambda p: p.train("baseline"), "whole number > 0"),
    ("train.epochs", True, lambda p: p.train("baseline"), "whole number > 0"),
    ("train.batch_size", 0, lambda p: p.train("adversarial"), "whole number > 0"),
    ("train.lr", -1, lambda p: p.train("baseline"), "number > 0"),
    ("train.lr", float("nan"), lambda p: p.train("baseline"), "number > 0"),
    ("compute.device", "tpu", lambda p: p.compute(), "auto, cpu, cuda or cuda:N"),
    ("compute.device", "cuda:x", lambda p: p.device(), "auto, cpu, cuda or cuda:N"),
    ("data.archive_md5", "xyz", lambda p: p.data(), "32 hex digits"),
    ("angular.alpha", 0, lambda p: p.angular(), "strictly between 0 and 90"),
    ("angular.alpha", 90, lambda p: p.angular(), "strictly between 0 and 90"),
    ("angular.per_class", 1, lambda p: p.angular(), ">= 2"),
    ("knn.k", 0, lambda p: p.knn_k(), "whole number > 0"),
    ("perturb.p", 1.5, lambda p: p.perturb(), "[0, 1]"),
    ("seeds.train", -3, lambda p: p.seed("train"), "whole number >= 0"),
    ("model.dropout", 1.0, lambda p: p.model(), "[0, 1)"),
    ("compute.fast", "yes", lambda p: p.compute(), "true or false"),
]


@pytest.mark.parametrize("key, value, accessor, allowed", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, *_ in BAD_VALUES])
def test_bad_value_names_key_value_and_what_is_allowed(raw, key, value, accessor, allowed):
    with pytest.raises(ParamsError) as error:
        accessor(params_with(raw, key, value))
    message = str(error.value)
    assert f"`{key}`" in message
    assert repr(value) in message
    assert allowed in message
    assert f"dvc exp run -S {key}=" in message
    assert "\n" not in message


@pytest.mark.parametrize("key, accessor", [
    ("train.lr", lambda p: p.train("baseline")),
    ("angular.alpha", lambda p: p.angular()),
    ("perturb.noise.std", lambda p: p.perturb()),
])
def test_missing_key_is_named(raw, key, accessor):
    edited = copy.deepcopy(raw)
    *parents, last = key.split(".")
    node = edited
    for part in parents:
        node = node[part]
    del node[last]
    with pytest.raises(ParamsError, match=rf"`{key}` is missing") as error:
        accessor(Params(edited))
    assert "params.yaml" in str(error.value)


def test_missing_section_is_named(raw):
    edited = copy.deepcopy(raw)
    del edited["knn"]
    with pytest.raises(ParamsError, match="`knn.k` is missing"):
        Params(edited).knn_k()


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ParamsError) as error:
        Params.method("robust")
    message = str(error.value)
    assert "'robust'" in message
    for method in METHODS:
        assert method in message
    with pytest.raises(ParamsError, match="unknown method"):
        load_params(PARAMS).train("robust")


def test_angular_training_does_not_read_train_batch_size(raw):
    # dvc.yaml does not make train@angular depend on train.batch_size, so it must not be read
    params = params_with(raw, "train.batch_size", 0)
    assert params.train("angular").batch_size == 0
    with pytest.raises(ParamsError, match="train.batch_size"):
        params.train("baseline")


def test_stages_that_never_attack_do_not_read_the_fgm_eps(raw):
    params = params_with(raw, "perturb.fgm.eps", 5)
    assert params.perturb(with_fgm=False).fgm_eps == 0.0
    with pytest.raises(ParamsError, match="perturb.fgm.eps"):
        params.perturb()


def test_load_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(listing)


def run_stage_in(tmp_path: Path, raw: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_stage_with_a_bad_param_exits_2_with_one_line_before_heavy_work(tmp_path, raw):
    edited = copy.deepcopy(raw)
    edited["train"]["epochs"] = 0
    result = run_stage_in(tmp_path, edited, "stages.train", "baseline")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "`train.epochs` = 0" in lines[0]
    assert "dvc exp run -S train.epochs=" in lines[0]
    # nothing was produced, and the data (absent here) was never looked for
    assert "cifar10.npz" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_stage_with_good_params_gets_as_far_as_the_data(tmp_path, raw):
    """The control for the test above: with valid params the same run fails later, on the missing data."""
    edited = copy.deepcopy(raw)
    edited["compute"]["device"] = "cpu"
    result = run_stage_in(tmp_path, edited, "stages.train", "baseline")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "cifar10.npz" in lines[0]


def test_stage_with_an_unknown_method_exits_2(tmp_path, raw):
    result = run_stage_in(tmp_path, raw, "stages.train", "robust")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: unknown method 'robust'")
