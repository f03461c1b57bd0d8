import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robust_cifar.check_params import validate_params
from robust_cifar.compute import ComputeConfig
from robust_cifar.data.download import DataConfig
from robust_cifar.data.split import SplitConfig
from robust_cifar.errors import ParamsError
from robust_cifar.conditions import knn_k
from robust_cifar.model import ModelConfig
from robust_cifar.params import BOOLEAN, Params, Rule, changed_while_read, get_dotted, leaf_keys, load_params, set_dotted
from robust_cifar.perturbations.perturb import PerturbSettings, fgm_eps_from_params
from robust_cifar.reporting.umap_plot import UmapConfig
from robust_cifar.training.methods.registry import REFERENCE_METHOD, REGISTRY, build_method, shaped_like
from robust_cifar.training.methods.objectives import AngularEmbedding
from robust_cifar.training.methods.pgd_examples import PgdExamples
from robust_cifar.training.train import TrainConfig
from stages.check_params import main as check_params_stage
from tests.forked_runs import run_module
from tests.methods import ANGULAR, HEAD, PERTURBED_ANGULAR, PERTURBED_HEAD, PGD_HEAD

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PARAMS.read_text())


def params_with(raw: dict, key: str, value) -> Params:
    edited = copy.deepcopy(raw)
    set_dotted(edited, key, value)
    return Params(edited)


def test_the_real_params_are_valid_and_every_key_is_read():
    params = load_params(PARAMS)
    validate_params(params)
    assert set(params.leaf_keys()) <= params.read
    assert sorted(params.method_names()) == list(REGISTRY)   # the study runs every registered method


def test_every_method_section_builds_its_method(raw):
    params = Params(raw)
    for name in params.method_names():
        method = build_method(name, params)
        assert method.name == name
    assert build_method(ANGULAR, params).objective.alpha == float(raw[ANGULAR]["alpha"])
    assert build_method(HEAD, params).batch_order.batch_size == raw[HEAD]["batch_size"]
    assert build_method(PERTURBED_HEAD, params).training_perturbation.settings == PerturbSettings.from_params(params, f"{PERTURBED_HEAD}.perturb")
    assert build_method(ANGULAR, params).training_perturbation is None


def test_a_test_picks_a_method_by_what_it_is(raw):
    params = Params(raw)
    picked = [HEAD, PERTURBED_HEAD, PGD_HEAD, ANGULAR, PERTURBED_ANGULAR]
    assert len(set(picked)) == len(picked) and set(picked) <= set(REGISTRY)
    assert isinstance(build_method(PGD_HEAD, params).training_perturbation, PgdExamples)
    assert not build_method(ANGULAR, params).has_head and build_method(PERTURBED_HEAD, params).has_head
    with pytest.raises(LookupError, match="no registered method trains a AngularEmbedding on PgdExamples"):
        shaped_like(AngularEmbedding, PgdExamples, params)


def test_by_default_training_perturbations_are_the_evaluation_ones(raw):
    """The write-up: adversarial training applies the same perturbations it is evaluated on."""
    params = Params(raw)
    evaluation = PerturbSettings.from_params(params)
    for name in (PERTURBED_HEAD, PERTURBED_ANGULAR):
        assert build_method(name, params).training_perturbation.settings == evaluation


def test_real_values_are_read_through(raw):
    params = Params(raw)
    assert ModelConfig.from_params(params) == ModelConfig(raw["model"]["width"], raw["model"]["embedding_dim"],
                                                          float(raw["model"]["dropout"]))
    assert isinstance(build_method(ANGULAR, params).objective.alpha, float)  # ints in yaml become floats
    assert knn_k(params) == raw["knn"]["k"]
    assert params.train_seeds() == raw["seeds"]["train"]


# (dotted key, bad value, accessor, words that must say what is allowed)
BAD_VALUES = [
    ("split.train_fraction", 0, SplitConfig.from_params, "strictly between 0 and 1"),
    ("split.train_fraction", 1, SplitConfig.from_params, "strictly between 0 and 1"),
    ("split.train_fraction", 1.5, SplitConfig.from_params, "strictly between 0 and 1"),
    ("train.epochs", 0, TrainConfig.from_params, "whole number"),
    ("train.epochs", -1, TrainConfig.from_params, "whole number"),
    ("train.epochs", 2.5, TrainConfig.from_params, "whole number"),
    ("train.epochs", True, TrainConfig.from_params, "whole number"),
    ("train.lr", -1, TrainConfig.from_params, "number"),
    ("train.lr", float("nan"), TrainConfig.from_params, "number"),
    ("train.lr_schedule_on", "loss", TrainConfig.from_params, "epoch_mean or last_batch or validation"),
    ("train.perturbed_val_every", 0, TrainConfig.from_params, "whole number"),
    (f"{HEAD}.batch_size", 0, lambda p: build_method(HEAD, p), "whole number"),
    ("compute.device", "tpu", ComputeConfig.from_params, "cpu, cuda or cuda:N"),
    ("compute.device", "cuda:x", ComputeConfig.from_params, "cpu, cuda or cuda:N"),
    ("compute.device", "auto", ComputeConfig.from_params, "no 'auto': the device changes the numbers"),
    ("compute.threads", 0, ComputeConfig.from_params, "CPU threads per stage process"),
    ("compute.threads", "2", ComputeConfig.from_params, "CPU threads per stage process"),
    ("compute.deterministic", 1, ComputeConfig.from_params, "true or false"),
    ("compute.cuda_graphs", "yes", ComputeConfig.from_params, "true or false"),
    ("data.archive_md5", "xyz", DataConfig.from_params, "32 hex digits"),
    (f"{ANGULAR}.alpha", 0, lambda p: build_method(ANGULAR, p), "strictly between 0 and 90"),
    (f"{ANGULAR}.alpha", 90, lambda p: build_method(ANGULAR, p), "strictly between 0 and 90"),
    (f"{ANGULAR}.per_class", 1, lambda p: build_method(ANGULAR, p), "from 2 to 1,000 (a class needs positive pairs"),
    (f"{PERTURBED_ANGULAR}.perturb.p", 2, lambda p: build_method(PERTURBED_ANGULAR, p), "[0, 1]"),
    ("knn.k", 0, knn_k, "whole number"),
    ("perturb.p", 1.5, PerturbSettings.from_params, "[0, 1]"),
    ("seeds.split", -3, lambda p: p.seed("split"), "whole number from 0 to 4,294,967,295"),
    # UMAP seeds numpy's RandomState (32 bits): 2**32 passed check_params and failed in umap_plot
    ("seeds.umap", 2**32, lambda p: p.seed("umap"), "from 0 to 4,294,967,295 (numpy's RandomState takes 32 bits)"),
    ("seeds.train", [0, 2**63], lambda p: p.train_seeds(), "distinct whole numbers from 0 to 2**32 - 1"),
    ("seeds.train", [0, 0], lambda p: p.train_seeds(), "list of 1 to 100 distinct whole numbers"),
    ("seeds.train", 0, lambda p: p.train_seeds(), "list of 1 to 100 distinct whole numbers"),
    ("model.dropout", 1.0, ModelConfig.from_params, "[0, 1)"),
    ("compute.fast", "yes", ComputeConfig.from_params, "true or false"),
    ("umap.min_dist", 1.5, UmapConfig.from_params, "UMAP's spread"),
    ("umap.fit_samples", 2, UmapConfig.from_params, "0 (all) or a whole number from 10"),
    # upper bounds catch typos, and say where they come from
    ("train.epochs", 10**12, TrainConfig.from_params, "from 1 to 10,000 (the study trains 100)"),
    ("train.lr", 1e6, TrainConfig.from_params, "(0, 10] (the study uses 0.01)"),
    ("perturb.noise.std", 1e9, PerturbSettings.from_params, "[0, 1] (pixel units"),
    ("knn.k", 500, knn_k, "from 1 to 99"),
    ("model.width", 4096, ModelConfig.from_params, "from 1 to 512"),
    (f"{HEAD}.batch_size", 10**6, lambda p: build_method(HEAD, p), "from 1 to 65,536"),
    ("methods", HEAD, lambda p: p.method_names(), "list of distinct method names"),
    # a temperature twice ran its attack twice
    ("attack.soft_knn_pgd.temperatures", [0.05, 0.05], validate_params, "1 to 10 distinct numbers in (0, 100]"),
    ("methods", [HEAD, HEAD], lambda p: p.method_names(), "list of distinct method names"),
]


@pytest.mark.parametrize("key, value, accessor, allowed", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, *_ in BAD_VALUES])
def test_bad_value_names_key_value_and_what_is_allowed(raw, key, value, accessor, allowed):
    for check in (accessor, validate_params):   # refused where it is used, and by the check_params stage
        with pytest.raises(ParamsError) as error:
            check(params_with(raw, key, value))
        message = str(error.value)
        assert f"`{key}`" in message
        assert repr(value) in message
        assert allowed in message
        assert f"dvc exp run -S {key}=" in message
        assert "\n" not in message


@pytest.mark.parametrize("key, accessor", [
    ("train.lr", TrainConfig.from_params),
    (f"{ANGULAR}.alpha", lambda p: build_method(ANGULAR, p)),
    ("perturb.noise.std", PerturbSettings.from_params),
])
def test_missing_key_is_named(raw, key, accessor):
    edited = copy.deepcopy(raw)
    parent, _, last = key.rpartition(".")
    del get_dotted(edited, parent)[last]
    with pytest.raises(ParamsError, match=rf"`{key}` is missing") as error:
        accessor(Params(edited))
    assert "params.yaml" in str(error.value)


def test_missing_section_is_named(raw):
    edited = copy.deepcopy(raw)
    del edited["knn"]
    with pytest.raises(ParamsError, match="`knn.k` is missing"):
        knn_k(Params(edited))


@pytest.mark.parametrize("section, value", [("model", [4, 128, 0.1]), ("perturb.noise", 0.05)])
def test_a_value_where_a_section_belongs_is_named_as_such(raw, section, value):
    edited = copy.deepcopy(raw)
    set_dotted(edited, section, value)
    with pytest.raises(ParamsError, match=rf"`{section}` = {re.escape(repr(value))} is invalid: must be a section of keys") as error:
        validate_params(Params(edited))
    # with dvc.yaml as the target: without one, a refused `dvc exp run` may delete outputs (docs/experiments.md)
    assert str(error.value).endswith(f"override it with `dvc exp run -S {section}=... dvc.yaml`")


@pytest.mark.parametrize("key, value, suggestion", [
    ("train.epochz", 5, "train.epochs"),
    ("umap.n_neighbours", 15, "umap.n_neighbors"),
    (f"{ANGULAR}.alfa", 40, f"{ANGULAR}.alpha"),
    ("foo", 1, None),
])
def test_unknown_keys_are_refused_with_the_nearest_known_key(raw, key, value, suggestion):
    with pytest.raises(ParamsError) as error:
        validate_params(params_with(raw, key, value))
    message = str(error.value)
    assert f"unknown key `{key}`" in message
    assert (f"did you mean `{suggestion}`?" in message) if suggestion else ("remove it" in message)


@pytest.mark.parametrize("unknown", ["robust", HEAD.capitalize()])   # a capital once met only the list's shape rule
def test_an_unknown_method_lists_the_known_ones(raw, unknown):
    with pytest.raises(ParamsError) as error:
        validate_params(params_with(raw, "methods", [HEAD, unknown]))
    message = str(error.value)
    assert f"{unknown!r}" in message
    assert all(name in message for name in REGISTRY)


def test_dotted_keys_reach_into_nested_mappings_and_the_top_level():
    tree = {"train": {"lr": 0.01, "schedule": {"factor": 0.05}}, "methods": [HEAD]}
    set_dotted(tree, "train.schedule.factor", 0.5)
    set_dotted(tree, "methods", [HEAD, ANGULAR])
    assert tree == {"train": {"lr": 0.01, "schedule": {"factor": 0.5}}, "methods": [HEAD, ANGULAR]}
    assert get_dotted(tree, "train.schedule") == {"factor": 0.5} and get_dotted(tree, "train.lr") == 0.01
    with pytest.raises(KeyError):
        set_dotted(tree, "model.width", 8)   # a parent that is not there


def test_methods_without_the_reference_method_are_refused_in_one_line(raw):
    with pytest.raises(ParamsError) as error:
        validate_params(params_with(raw, "methods", [name for name in REGISTRY if name != REFERENCE_METHOD]))
    message = str(error.value)
    assert f"lacks {REFERENCE_METHOD!r}" in message and "\n" not in message
    assert REFERENCE_METHOD in REGISTRY
    validate_params(params_with(raw, "methods", [REFERENCE_METHOD]))   # the reference alone is a study


def test_summarize_refuses_methods_without_the_reference_method_before_reading_a_file(raw, tmp_path, monkeypatch):
    """`dvc repro -s summarize` skips check_params: summarize met the missing baseline as a KeyError, after DVC had
    removed its outputs."""
    from stages.summarize import main as summarize_stage

    edited = params_with(raw, "methods", [name for name in REGISTRY if name != REFERENCE_METHOD]).raw
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited))
    monkeypatch.chdir(tmp_path)   # no report of any stage here: a reader would fail on its file first
    with pytest.raises(ParamsError, match=f"lacks {REFERENCE_METHOD!r}, the method every other is compared with"):
        summarize_stage([])


@pytest.mark.parametrize("where, key, words", [
    (None, "train.epochs", "the key `train.epochs` holds a dot: write it nested, `epochs:` under `train:`"),
    (None, "foo.bar", "the key `foo.bar` holds a dot: write it nested, `bar:` under `foo:`"),
    ("train", "lr.x", "the key `train.lr.x` holds a dot"),
    (None, 1, "a key reads as the number 1, not a name"),
    (None, None, "a key reads as null, not a name"),
    ("knn", True, "a key in `knn` reads as true, not a name")])
def test_a_key_that_is_no_name_or_holds_a_dot_is_refused_in_one_line(raw, where, key, words):
    """`train.epochs: 5` at the top level passed check_params, read by no stage; `1:`, `~:` and `true:` were tracebacks."""
    edited = copy.deepcopy(raw)
    (edited[where] if where else edited)[key] = 5
    with pytest.raises(ParamsError) as error:
        validate_params(Params(edited))
    assert words in str(error.value) and "\n" not in str(error.value)


def test_an_unlisted_method_section_is_still_checked(raw):
    edited = params_with(raw, f"{ANGULAR}.alpha", 100).raw
    edited["methods"] = [HEAD]
    with pytest.raises(ParamsError, match=f"{ANGULAR}.alpha"):
        validate_params(Params(edited))


def test_stages_that_never_attack_do_not_read_the_fgm_eps(raw):
    params = params_with(raw, "perturb.fgm.eps_255", 500)
    assert PerturbSettings.from_params(params, with_fgm=False).fgm_eps == 0.0
    assert "perturb.fgm.eps_255" not in params.read
    with pytest.raises(ParamsError, match="perturb.fgm.eps_255"):
        fgm_eps_from_params(params)


def test_every_eps_is_set_in_units_of_1_over_255_and_read_in_pixels(raw):
    params = Params(raw)
    assert raw["perturb"]["fgm"]["eps_255"] == 6.375            # the write-up's 0.1 in normalized units
    assert fgm_eps_from_params(params) == 6.375 / 255 == 0.025
    assert build_method(PERTURBED_HEAD, params).training_perturbation.settings.fgm_eps == 0.025
    assert 6.375 in raw["attack"]["eps_255"]


@pytest.mark.parametrize("key, value, words", [
    ("perturb.fgm.eps", 0.025, "`perturb.fgm.eps` = 0.025 is in pixel units, which this project no longer reads: "
                               "every eps is set in 1/255 now; write `perturb.fgm.eps_255: 6.375` instead"),
    (f"{PERTURBED_HEAD}.perturb.fgm.eps", 0.03, f"write `{PERTURBED_HEAD}.perturb.fgm.eps_255: 7.65` instead"),
    ("attack.eps", [0, 8], "`attack.eps` was renamed: write attack.eps_255 instead (same values)"),
    ("attack.pgd_steps", 3, "write attack.pgd.steps instead"),
    ("attack.knn_temperatures", [0.05], "write the temperatures of attack.soft_knn_pgd, attack.soft_knn_apgd_ce and attack.soft_knn_apgd_dlr"),
])
def test_an_old_spelling_is_refused_with_the_new_key_and_value(raw, key, value, words):
    """An old pixel-unit eps must never be read as 1/255 (0.025/255 would be no attack at all)."""
    with pytest.raises(ParamsError) as error:
        validate_params(params_with(raw, key, value))
    assert words in str(error.value)


def test_the_figures_seed_must_be_a_training_seed(raw):
    with pytest.raises(ParamsError, match=r"`seeds.figures` = 7 is invalid: must be one of seeds.train \[0, 1, 2\]"):
        validate_params(params_with(raw, "seeds.figures", 7))


def test_without_an_archive_the_url_must_be_an_address(raw):
    for url in ("", "cifar-10-python.tar.gz", "ftp://example.org/c.tar.gz"):
        with pytest.raises(ParamsError, match="not an http\\(s\\) address and `data.archive` is empty"):
            validate_params(params_with(raw, "data.url", url))
    edited = params_with(raw, "data.url", "").raw
    edited["data"]["archive"] = "local.tar.gz"
    assert DataConfig.from_params(Params(edited)).archive == "local.tar.gz"


def test_leaf_keys_treat_an_empty_section_as_a_key():
    assert leaf_keys({"a": {"b": 1, "c": {}}, "d": [1]}) == ["a.b", "a.c", "d"]


def test_load_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML") as error:
        load_params(broken)
    assert "\n" not in str(error.value)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match=r"must hold sections of keys .* holds list \"\['a', 'b'\]\"") as error:
        load_params(listing)
    assert str(error.value).endswith("restore it with `git checkout params.yaml`")
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    with pytest.raises(ParamsError, match=r"holds nothing \(an empty file\): fix it, or restore it"):
        load_params(empty)


def run_stage_in(tmp_path: Path, raw: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return run_module(tmp_path, *args, env=env)   # `python -m`, forked from a process that has imported torch


def test_stage_with_a_bad_param_exits_2_with_one_line_before_heavy_work(tmp_path, raw):
    edited = copy.deepcopy(raw)
    edited["train"]["epochs"] = 0
    result = run_stage_in(tmp_path, edited, "stages.train", HEAD, "0")
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


@pytest.mark.parametrize("experiment", ["workspace", "temp", "none"])
def test_a_refusal_under_a_workspace_experiment_says_how_to_put_params_yaml_back(tmp_path, raw, experiment):
    """`dvc exp run -S` leaves its values in params.yaml when a stage refuses, often where `git status` does not
    show them; in a queued or --temp run (DVC_ROOT: the project, not the stage's copy) nothing is left. Outside a
    workspace experiment, a stage DVC ran (DVC_STAGE) says DVC removed its outputs and how to get them back."""
    edited = copy.deepcopy(raw)
    edited["train"]["epochs"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("DVC_EXP_NAME", None)
    env["DVC_STAGE"] = f"train@{HEAD}-0"
    if experiment != "none":
        env.update(DVC_EXP_NAME="exp-1", DVC_ROOT=str(tmp_path if experiment == "workspace" else ROOT))
    result = run_module(tmp_path, "stages.train", HEAD, "0", env=env)
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "`train.epochs` = 0" in line
    assert ("git show HEAD:params.yaml > params.yaml" in line) == (experiment == "workspace"), line
    assert (f"`dvc checkout train@{HEAD}-0` puts back" in line) == (experiment != "workspace"), line


def test_stage_with_good_params_gets_as_far_as_the_data(tmp_path, raw):
    """The control for the test above: with valid params the same run fails later, on the missing data."""
    edited = copy.deepcopy(raw)
    edited["compute"]["device"] = "cpu"
    edited["compute"]["fast"] = False   # valid on every CPU: bf16 is refused on one without bf16 units (AVX2 only)
    result = run_stage_in(tmp_path, edited, "stages.train", HEAD, "0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "cifar10.npz" in lines[0]


def test_check_params_stage_refuses_an_unknown_key_in_one_line(tmp_path, raw, monkeypatch):
    edited = copy.deepcopy(raw)
    edited["train"]["epochz"] = 5
    result = run_stage_in(tmp_path, edited, "stages.check_params")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: unknown key `train.epochz` (nothing reads it): did you mean `train.epochs`?"]
    assert not (tmp_path / "data").exists()
    # the defaults name a GPU (the full study is a GPU job): on this machine's CPU in fp32 they pass
    # (the stage's own function, in this process: the subprocess above ran its command line)
    on_cpu = copy.deepcopy(raw)
    on_cpu["compute"].update(device="cpu", fast=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(on_cpu))
    monkeypatch.chdir(tmp_path)
    check_params_stage([])
    assert (tmp_path / "data/params/checked.txt").read_text() == "params.yaml is valid\n"


def test_stage_with_an_unknown_method_exits_2(tmp_path, raw):
    result = run_stage_in(tmp_path, raw, "stages.train", "robust", "0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: unknown method 'robust'")


def test_params_are_read_as_dvc_reads_them_yaml_1_2(tmp_path):
    """PyYAML (YAML 1.1) read `1e-3` as a string, `010` as 8 and `yes` as true; DVC records 0.001, 10, 'yes'."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\nseeds:\n  split: 010\ncompute:\n  fast: yes\n")
    params = load_params(path)
    assert params.raw == {"train": {"lr": 0.001}, "seeds": {"split": 10}, "compute": {"fast": "yes"}}
    with pytest.raises(ParamsError, match="`compute.fast` = 'yes' is invalid: must be true or false"):
        params.value("compute.fast", BOOLEAN)


@pytest.mark.parametrize("text", [
    "%YAML 1.1\n---\nknn:\n  k: 011\nseeds:\n  split: 010\ncompute:\n  fast: no\n",
    "%YAML 1.2\n---\ntrain:\n  lr: 1e-3\n",
    "train:\n  lr: .inf\n  epochs: 0x10\n  momentum: ~\nseeds:\n  split: 0o17\nknn:\n  k: 1_000\n",
], ids=["a YAML 1.1 directive", "a YAML 1.2 directive", "odd scalars"])
def test_params_read_exactly_as_dvc_reads_them_even_with_a_yaml_directive(tmp_path, text):
    """A `%YAML 1.1` line once made the stages read `011` as 9 where DVC recorded 11 (and `no` as false, not 'no')."""
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).raw == dvc_parse_yaml(text, str(path))


def test_method_modules_that_make_no_registry_are_one_line_before_any_stage(monkeypatch):
    """A method file named otherwise than its NAME, or a LABEL of another method, was an ImportError traceback in
    every stage that imports the registry; check_params now refuses it in one line."""
    import types

    from robust_cifar.check_params import validate_params
    from robust_cifar.training.methods import registry

    def module(stem: str, label: str):
        return types.SimpleNamespace(__name__=f"robust_cifar.training.methods.{stem}", LABEL=label)
    assert registry.registry_problem() is None
    for name, stem, label, words in [("mine2x", "mine2", "mtwo", "mine2.py sets NAME to 'mine2x'"),
                                     ("mine", "mine", registry.label(REFERENCE_METHOD), "a LABEL of its own"),
                                     ("mine", "mine", "Mtwo", "a LABEL of its own")]:
        with monkeypatch.context() as patch:
            patch.setitem(registry.REGISTRY, name, module(stem, label))
            with pytest.raises(ParamsError, match=words) as refused:
                validate_params(load_params(PARAMS))
            assert "\n" not in str(refused.value)


# --- params edited while a stage runs ------------------------------------------------------------------------------

def test_a_value_a_stage_read_and_that_changed_since_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 2\nknn:\n  k: 3\n")
    params = load_params(path)
    params.value("train.lr", Rule(lambda v: True, "any"))
    loaded = [(path.resolve(), params)]
    assert changed_while_read(loaded) is None
    path.write_text("train:\n  lr: 0.01\n  epochs: 9\nknn:\n  k: 3\n# a comment\n")   # keys it did not read
    assert changed_while_read(loaded) is None
    path.write_text("train:\n  lr: 0.02\n  epochs: 2\n")
    assert changed_while_read(loaded) == "`train.lr`: 0.01 -> 0.02"
    path.write_text("train:\n  epochs: 2\n")
    assert changed_while_read(loaded) == "`train.lr`: 0.01 -> gone"
    path.write_text("train: [\n")
    assert changed_while_read(loaded) == f"{path.resolve()} is now unreadable"


# A stand-in stage: reads train.lr, then params.yaml is edited (by its argument) before it ends
EDITED_STAGE = """import sys
from pathlib import Path
from robust_cifar.params import Rule, load_params
from robust_cifar.stage import run_stage

def main(argv):
    load_params().value("train.lr", Rule(lambda v: True, "any"))
    Path("params.yaml").write_text(argv[0])
    Path("out.txt").write_text("computed")

run_stage(main)
"""


@pytest.mark.parametrize("edited, refused", [("train:\n  lr: 0.01\n  epochs: 5\n", False),
                                             ("train:\n  lr: 0.02\n  epochs: 2\n", True)])
def test_a_stage_whose_params_changed_while_it_ran_fails_so_dvc_records_nothing(tmp_path, edited, refused):
    """DVC reads the params into dvc.lock (and its run cache) after the stage: the new lr beside an old-lr model."""
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.01\n  epochs: 2\n")
    stage = subprocess.run([sys.executable, "-c", EDITED_STAGE, edited], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                "ROBUST_CIFAR_CACHE": str(tmp_path / "cache")})
    assert stage.returncode == (2 if refused else 0), stage.stderr
    if refused:
        assert stage.stderr.strip().count("\n") == 0, stage.stderr
        assert "params.yaml changed while this stage ran (`train.lr`: 0.01 -> 0.02)" in stage.stderr
        assert "run `dvc repro` again" in stage.stderr


@pytest.mark.parametrize("text, words", [
    ("perturb: &plan\n  p: 0.3\nadversarial:\n  perturb: *plan\n",
     "line 1 holds the anchor &plan: `dvc exp run -S` cannot edit"),
    ("knn:\n  k: 3  # the control: & and * in a comment or a string name no node\nurl: 'a&b*c'\n", None),
    ("knn:\n  k: 3\nknn:\n  k: 4\n", 'is not valid YAML (found duplicate key "knn"'),
    ("knn:\n\tk: 3\n", "is not valid YAML (found character that cannot start any token, line 2)"),
])
def test_a_params_file_dvc_would_edit_wrongly_or_cannot_read_is_one_line_naming_where(tmp_path, text, words):
    """An anchor shared by two sections made `dvc exp run -S perturb.p=0.5` an experiment of p = 0.3, unsaid (DVC
    merges its edit back into the shared node)."""
    (tmp_path / "params.yaml").write_text(text)
    if words is None:
        assert load_params(tmp_path / "params.yaml").raw == {"knn": {"k": 3}, "url": "a&b*c"}
        return
    with pytest.raises(ParamsError) as error:
        load_params(tmp_path / "params.yaml")
    assert words in str(error.value) and "\n" not in str(error.value)
