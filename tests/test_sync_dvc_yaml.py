"""The dvc.yaml syncer: exactly the .py entries of the stages whose imports moved, and the method lists
DVC cannot loop over, generated from params.yaml's `methods`."""
import shutil
from pathlib import Path

import pytest
import yaml

from robust_cifar.check_params import check_code_deps, warn_plots_of_other_methods
from robust_cifar.errors import UserError
from robust_cifar.params import Params
from robust_cifar.training.methods.registry import REFERENCE_METHOD
from tests.methods import ANGULAR, PERTURBED_HEAD
from tools.sync_dvc_yaml import generated_sections, synced, with_generated

ROOT = Path(__file__).resolve().parent.parent

DVC_YAML = """\
stages:
  train:   # a comment
    cmd: python -m stages.train
    deps:
      - data/raw.npz   # data first
      - robust_cifar/old.py
      - stages/train.py
    params:
      - train
  umap:
    foreach: ${methods}
    do:
      cmd: python -m stages.umap ${item}
      deps:
        - data/${item}.npz
        - stages/umap.py
      outs:
        - reports/${item}.png
"""


def test_a_moved_import_rewrites_only_that_stages_code_deps():
    text, changed = synced(DVC_YAML, {"train": ["robust_cifar/new.py", "stages/train.py"], "umap": ["stages/umap.py"]})
    assert changed == ["train"]
    assert text == DVC_YAML.replace("robust_cifar/old.py", "robust_cifar/new.py")


def test_deps_under_a_foreach_are_synced_and_data_deps_kept():
    text, changed = synced(DVC_YAML, {"train": ["robust_cifar/old.py", "stages/train.py"],
                                      "umap": ["robust_cifar/reporting/colours.py", "stages/umap.py"]})
    assert changed == ["umap"]
    assert "        - data/${item}.npz\n        - robust_cifar/reporting/colours.py\n        - stages/umap.py\n      outs:" in text
    assert text.count("data/raw.npz   # data first") == 1


def project_with(folder: Path, stages: dict) -> Path:
    """A project of the repository's code and a dvc.yaml of these stages."""
    folder.mkdir()
    for package in ("robust_cifar", "stages"):
        (folder / package).symlink_to(ROOT / package)
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return folder / "dvc.yaml"


@pytest.mark.parametrize("stage, dropped", [("evaluate", "robust_cifar/evaluation/knn.py"),
                                            ("check_params", "stages/embed.py")])
def test_check_params_refuses_a_dvc_yaml_that_misses_an_import(tmp_path, stage, dropped):
    """A stage that imports a module it does not list would not rerun when that module changes; check_params,
    whose deps are every stage's code, refuses it first (a developer who forgot `tools.sync_dvc_yaml`)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    check_code_deps(project_with(tmp_path / "synced", stages))
    body = stages[stage]["do"] if "foreach" in stages[stage] else stages[stage]
    body["deps"].remove(dropped)
    with pytest.raises(UserError, match=rf"code deps of {stage} are not the modules .*`python -m tools.sync_dvc_yaml`"):
        check_code_deps(project_with(tmp_path / "edited", stages))


def test_a_stage_of_the_users_own_is_left_to_declare_its_own_deps(tmp_path):
    """A researcher's added stage (a shell line, or a module outside the project) once stopped check_params
    with a traceback; its code deps are its own, and check_params does not count it as every stage's code."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stages["notify"] = {"cmd": "echo done", "deps": ["reports/summary.md"]}
    stages["mine"] = {"cmd": "python -m my_analysis.plot reports/summary.json", "deps": ["my_analysis/plot.py"]}
    stages["listed"] = {"cmd": ["python -m stages.summarize", "echo ok"]}
    check_code_deps(project_with(tmp_path / "project", stages))


def test_a_syntax_error_in_a_stages_code_is_one_line_naming_the_file(tmp_path):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    dvc_yaml = project_with(tmp_path / "project", stages)
    (tmp_path / "project" / "stages").unlink()
    shutil.copytree(ROOT / "stages", tmp_path / "project" / "stages")
    with open(tmp_path / "project" / "stages" / "umap_plot.py", "a") as module:
        module.write("def broken(:\n")
    with pytest.raises(UserError, match=r"stages/umap_plot.py:\d+: .*: fix the code, then rerun$"):
        check_code_deps(dvc_yaml)


def test_dvc_yamls_method_lists_are_generated_from_params_methods():
    """Run `python -m tools.sync_dvc_yaml` after a method joins or leaves params.yaml's `methods`."""
    text = (ROOT / "dvc.yaml").read_text()
    assert with_generated(text, yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]) == text


def test_every_generated_list_names_every_method():
    sections = yaml.safe_load(generated_sections(["first", "second_one"]).replace("${seeds.figures}", "0"))
    assert "metrics" not in sections   # one file for every method, above the generated part
    per_method = [definition for entry in sections["plots"] if isinstance(entry, dict) for definition in entry.values()]
    assert per_method and all(["first" in path for path in definition["y"]] == [True, False] for definition in per_method)
    assert [entry for entry in sections["plots"] if isinstance(entry, str) and "umap" in entry] == [
        "reports/umap/first.png", "reports/umap/second_one.png"]
    assert {name: artifact["path"] for name, artifact in sections["artifacts"].items()} == {
        "first": "models/first-0.pt", "second-one": "models/second_one-0.pt"}   # names take dashes, not underscores


def test_regenerating_keeps_everything_above_the_marker():
    once = with_generated(DVC_YAML, ["a"])
    assert once.startswith(DVC_YAML) and with_generated(once, ["a", "b"]).startswith(DVC_YAML)
    assert with_generated(with_generated(once, ["a", "b"]), ["a"]) == once


def test_a_method_in_params_without_its_file_is_refused_before_dvc_yaml_is_touched(tmp_path, monkeypatch):
    """Synced without the file, DVC skipped check_params (a dep gone is no change) and deleted the method's
    outputs before failing on the missing dep."""
    from robust_cifar.errors import UserError
    from tools import sync_dvc_yaml
    (tmp_path / "params.yaml").write_text("methods: [kept, gone_one]\n")
    (tmp_path / sync_dvc_yaml.FOLDER).mkdir(parents=True)
    (tmp_path / sync_dvc_yaml.FOLDER / "kept.py").write_text("NAME = 'kept'\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setattr(sync_dvc_yaml, "ROOT", tmp_path)
    with pytest.raises(UserError, match="lists gone_one, which no robust_cifar/training/methods/<name>.py defines"):
        sync_dvc_yaml.main([])
    assert (tmp_path / "dvc.yaml").read_text() == "stages: {}\n"


def test_a_method_module_is_found_however_its_name_is_assigned(tmp_path):
    """`NAME: str = ...` once hid a method's imports from every per-run stage's deps."""
    from robust_cifar.code_deps import defines_name
    for line, defines in (("NAME = 'a'", True), ("NAME: str = 'a'", True), ("NAMES = ['a']", False),
                          ("def f():\n    NAME = 'a'", False)):
        path = tmp_path / f"m{len(line)}{defines}.py"
        path.write_text(line + "\n")
        assert defines_name(path) == defines, line


@pytest.mark.parametrize("params, dvc_yaml, words", [
    ("methods: [kept\n", "stages: {}\n", "params.yaml is not valid YAML"),
    (None, "stages: {}\n", "params.yaml not found"),
    ("methods: [kept, kept]\n", "stages: {}\n", "a non-empty list of distinct method names"),   # wrote duplicate keys
    ("methods: []\n", "stages: {}\n", "a non-empty list of distinct method names"),
    ("methods: [kept]\n", None, "dvc.yaml not found"),
    ("methods: [kept]\n", "stages: [\n", "dvc.yaml is not valid YAML"),
])
def test_a_broken_params_or_dvc_yaml_is_one_line_and_nothing_is_written(tmp_path, monkeypatch, params, dvc_yaml, words):
    from robust_cifar.errors import UserError
    from tools import sync_dvc_yaml
    for name, text in (("params.yaml", params), ("dvc.yaml", dvc_yaml)):
        if text is not None:
            (tmp_path / name).write_text(text)
    (tmp_path / sync_dvc_yaml.FOLDER).mkdir(parents=True)
    (tmp_path / sync_dvc_yaml.FOLDER / "kept.py").write_text("NAME = 'kept'\n")
    monkeypatch.setattr(sync_dvc_yaml, "ROOT", tmp_path)
    with pytest.raises(UserError, match=words) as refused:
        sync_dvc_yaml.main([])
    assert "\n" not in str(refused.value)
    assert (tmp_path / "dvc.yaml").exists() == (dvc_yaml is not None)
    if dvc_yaml is not None:
        assert (tmp_path / "dvc.yaml").read_text() == dvc_yaml


def test_plots_written_for_other_methods_are_named_with_the_sync_command(tmp_path, capsys):
    """DVC has no foreach in `plots`: a method dropped from `methods` leaves plots `dvc plots show` cannot load, an
    added one plots it never draws; check_params says so (a warning: an experiment of fewer methods is sound)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(with_generated(DVC_YAML, [REFERENCE_METHOD, ANGULAR]))
    warn_plots_of_other_methods(Params({**raw, "methods": [REFERENCE_METHOD, ANGULAR]}), dvc_yaml)
    assert capsys.readouterr().err == ""
    warn_plots_of_other_methods(Params({**raw, "methods": [REFERENCE_METHOD, PERTURBED_HEAD]}), dvc_yaml)
    [line] = capsys.readouterr().err.splitlines()
    assert f"name {ANGULAR}, which `methods` no longer lists" in line and f"lack {PERTURBED_HEAD}" in line
    assert "`python -m tools.sync_dvc_yaml` rewrites them" in line
