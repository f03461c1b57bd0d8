"""DVC can trust the pipeline: each stage declares every project module its command imports and
exactly the params keys it reads. Both checks fail naming the stage and what is missing or extra."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from robust_cifar.outputs import OUTPUT_FOLDERS
from robust_cifar.training.methods import FOLDER
from robust_cifar.training.methods.registry import REGISTRY
from tests.forked_runs import run_code
from tests.methods import ANGULAR
from tests.pipeline_project import METHODS, PARAMS_TRACE, covers, declared_params, stages_of, stale_stages
from robust_cifar.code_deps import BY_NAME, CHECK_STAGE, import_closure

ROOT = Path(__file__).resolve().parent.parent
# A stage that reads the whole of params.yaml declares the file itself, not its keys.
WHOLE_FILE = "check_params"
REGISTRY_FOLDER = f"{FOLDER}/"


def command_module(cmd: str) -> tuple[str, list[str]]:
    match = re.fullmatch(r"python -m (\S+)((?: \S+)*)", cmd)
    assert match, f"stage command {cmd!r} is not `python -m <module> [args]`"
    return match.group(1), match.group(2).split()


def command_closure(cmd: str, root: Path = ROOT) -> set[str]:
    module, args = command_module(cmd)
    # a per-run stage's method (its command's first argument) is the module build_method imports by name
    return {str(path).replace(BY_NAME, args[0] if args else BY_NAME) for path in import_closure(root, module)}


def code_dep_problems(name: str, cmd: str, declared: set[str], root: Path = ROOT) -> list[str]:
    """What a stage's .py deps lack or hold beyond its command's import closure (check_params: beyond every
    stage's, so that any code edit reruns its check of dvc.yaml's code deps)."""
    closure = (set().union(*(command_closure(stage.cmd, root) for stage in stages_of(root).values()))
               if name == CHECK_STAGE else command_closure(cmd, root))
    code = {dep for dep in declared if dep.endswith(".py")}
    problems = [f"{name}: imports {path} but does not list it in deps" for path in sorted(closure - code)]
    problems += [f"{name}: lists {path} in deps but does not import it" for path in sorted(code - closure)]
    return problems


def declared_deps(stage) -> set[str]:
    return {dep.def_path for dep in stage.deps if type(dep).__name__ == "Dependency"}


def params_problems(name: str, declared: set[str], read: set[str]) -> list[str]:
    """Every key read is covered by a declared entry (a key, or a section holding it); every declared
    entry covers a key that was read."""
    problems = [f"{name}: reads `{key}` but does not declare it under params"
                for key in sorted(read) if not any(covers(entry, key) for entry in declared)]
    problems += [f"{name}: declares `{entry}` under params but never reads it"
                 for entry in sorted(declared) if not any(covers(entry, key) for key in read)]
    return problems


def test_every_stage_lists_exactly_its_import_closure():
    problems = [problem for name, stage in stages_of(ROOT).items()
                for problem in code_dep_problems(name, stage.cmd, declared_deps(stage))]
    assert not problems, "\n".join(problems + ["fix: python -m tools.sync_dvc_yaml"])


def test_every_output_lies_in_an_output_folder():
    """The folders `preset --publish` refuses, since DVC deletes what it finds there."""
    outputs = [Path(out.def_path) for stage in stages_of(ROOT).values() for out in stage.outs]
    assert outputs and [str(path) for path in outputs
                        if not any(path.is_relative_to(folder) for folder in OUTPUT_FOLDERS)] == []


def test_the_code_guard_names_a_deleted_and_a_stale_dep():
    name = f"train@{ANGULAR}-0"
    stage = stages_of(ROOT)[name]
    deps = declared_deps(stage)
    assert code_dep_problems(name, stage.cmd, deps - {"robust_cifar/training/sampling.py"}) == [
        f"{name}: imports robust_cifar/training/sampling.py but does not list it in deps"]
    assert code_dep_problems(name, stage.cmd, deps | {"robust_cifar/evaluation/knn.py"}) == [
        f"{name}: lists robust_cifar/evaluation/knn.py in deps but does not import it"]


def project_modules_imported(code: str) -> set[str]:
    """The project's files that a fresh Python process has imported after running `code` (empty __init__s aside):
    forked from one that has imported torch and other libraries but no module of the project (tests/forked_runs.py)."""
    ran = run_code(ROOT, f"{code}\nimport sys; print('\\n'.join(sorted(m.__file__ for m in "
                        "list(sys.modules.values()) if getattr(m, '__file__', None))))", env=dict(os.environ))
    assert ran.returncode == 0, ran.stderr
    listing = ran.stdout.split()
    project = {Path(path).relative_to(ROOT).as_posix() for path in listing if Path(path).is_relative_to(ROOT)}
    return {path for path in project if path.split("/")[0] in ("robust_cifar", "stages")   # not a venv inside
            and (ROOT / path).stat().st_size > 0}


METHOD_FILES = {path.relative_to(ROOT).as_posix() for path in (ROOT / REGISTRY_FOLDER).glob("*.py")
                if path.stem in REGISTRY}


def test_a_registry_that_discovers_its_modules_makes_each_a_dep():
    """The method registry imports its modules by listing its folder, which no import statement shows:
    the closure follows it, and it matches what Python imports."""
    closure = {str(path) for path in import_closure(ROOT, "stages.summarize")}
    assert METHOD_FILES <= closure and not any(BY_NAME in path for path in closure)
    assert project_modules_imported("import stages.summarize") <= closure


def test_a_stage_of_one_run_depends_on_its_own_method_file_only():
    """train, embed and robustness build their run's method from its module alone: adding or editing another
    method's file reruns none of their stages. Python imports no other method's file, and the closure agrees."""
    for stage in ("train", "embed", "robustness"):
        closure = {str(path).replace(BY_NAME, ANGULAR) for path in import_closure(ROOT, f"stages.{stage}")}
        assert METHOD_FILES & closure == {f"{REGISTRY_FOLDER}{ANGULAR}.py"}, stage
        imported = project_modules_imported(f"import stages.{stage}\nfrom robust_cifar.params import load_params\n"
                                            f"from robust_cifar.training.methods.build import build_method\n"
                                            f"build_method({ANGULAR!r}, load_params())")
        assert METHOD_FILES & imported == {f"{REGISTRY_FOLDER}{ANGULAR}.py"}, stage
        assert imported <= closure, stage


def test_light_stages_do_not_import_torch():
    # summarize and curves read what a method is (the reference, its loss, the write-up's numbers) from the
    # method registry, which builds methods: they import torch
    for module in ("stages.download", "stages.split", "stages.umap_plot"):
        closure = {str(path) for path in import_closure(ROOT, module)}
        torch_users = [path for path in closure if "import torch" in (ROOT / path).read_text()]
        assert not torch_users, f"{module} reaches torch through {torch_users}"


def traces(project: Path) -> dict[str, set[str]]:
    return {path.stem: set(json.loads(path.read_text())) for path in (project / PARAMS_TRACE).glob("*.json")}


def trace_name(cmd: str) -> str:
    module, args = command_module(cmd)
    return "-".join([module.rsplit(".", 1)[-1], *args])


def test_every_stage_declares_exactly_the_params_it_read(reproduced_project):
    read = traces(reproduced_project)
    problems = []
    for name, stage in stages_of(reproduced_project).items():
        if name == WHOLE_FILE:
            continue
        assert trace_name(stage.cmd) in read, f"{name} left no record of the params it read"
        problems += params_problems(name, declared_params(stage), read[trace_name(stage.cmd)])
    assert not problems, "\n".join(problems)


def test_the_params_guard_names_a_deleted_and_an_unread_declaration(reproduced_project):
    name = f"embed@{ANGULAR}-0"
    stage = stages_of(reproduced_project)[name]
    read = traces(reproduced_project)[trace_name(stage.cmd)]
    declared = declared_params(stage)
    assert params_problems(name, declared - {"seeds.plan"}, read) == [
        f"{name}: reads `seeds.plan` but does not declare it under params"]
    assert params_problems(name, declared | {"knn.k"}, read) == [
        f"{name}: declares `knn.k` under params but never reads it"]


# every method of the tiny project


# A module of each role, and a tool no stage imports: the closure guard above checks every stage's deps; this
# checks that DVC sees an edit through them
@pytest.mark.parametrize("module, stale", [
    ("robust_cifar/evaluation/knn.py", {f"{stage}@{method}-0" for stage in ("evaluate", "robustness") for method in METHODS}),
    ("robust_cifar/training/live_log.py", {f"train@{method}-0" for method in METHODS} | {"curves"}),   # the log's digest
    ("robust_cifar/reporting/aggregate.py", {f"aggregate@{method}" for method in METHODS} | {"summarize"}),
    ("robust_cifar/data/split.py", {"split", "perturb", "examples", *(f"{stage}@{method}-0" for stage in ("train", "embed", "robustness")
                                                       for method in METHODS)}),
    # how an archive is read: the download alone (its .npz, if unchanged, stops there); the readers of
    # that .npz import robust_cifar/data/arrays.py only
    ("robust_cifar/data/archive.py", {"download"}),
    ("tools/bench.py", set()),
    # one method's file: its own runs, and what reads every method (the summary, the curves' losses)
    (f"{REGISTRY_FOLDER}{ANGULAR}.py", {f"{stage}@{ANGULAR}-0" for stage in ("train", "embed", "robustness")}
     | {"summarize", "curves"}),
])
def test_editing_a_module_makes_exactly_the_stages_that_import_it_stale(reproduced_project, module, stale):
    path = reproduced_project / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# edited\n")
        # check_params imports most of the library (it validates every section); its output is constant
        assert stale_stages(reproduced_project) - {"check_params"} == stale
    finally:
        path.write_text(original)
    assert stale_stages(reproduced_project) == set()


# A method's name as code spells it: the whole string, or a part of a key, stage or path ("<name>.alpha",
# "train@<name>-0", "models/<name>-0.pt"); the word inside prose ("adversarial training") is not one.


def method_names_in(source: str, names: list[str]) -> list[tuple[int, str]]:
    """(line, string) of each string constant in `source`, docstrings aside, that spells a method's name."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    spelled = re.compile(rf"(?:^|(?<=[@/\[,=]))({'|'.join(map(re.escape, names))})(?=[.\-@/,\]]|$)")
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and spelled.search(node.value)]


def test_no_code_outside_the_method_registry_names_a_method():
    """A method is named in its registry file, params.yaml and dvc.yaml's generated lists only: every other
    file loops over the registry, or picks a method by what it is (tests/methods.py)."""
    names = sorted(METHODS, key=len, reverse=True)
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = [f"{path}:{line}: {text!r}" for path in files if not path.startswith(REGISTRY_FOLDER)
             for line, text in method_names_in((ROOT / path).read_text(), names)]
    assert files and not found, "\n".join(found + [
        "each line names a method: loop over the registry there; where the string is not a method (a new method "
        "named like a word the code already uses: clean, knn, head), give the method another name"])


def test_the_name_guard_finds_a_key_a_stage_and_a_path_but_not_prose():
    source = 'x = "zq_method.batch_size"\ny = f"train@{s}" + "zq_method-0"\nz = ["models/zq_method-0.pt"]\n' \
             'w = "robust training"\ndef f():\n    """zq_method."""\n'
    assert [line for line, _ in method_names_in(source, ["zq_method", "robust"])] == [1, 2, 3]


def table_keys(path: Path) -> list[str]:
    """The first column of every table row of a Markdown file that is one `code` span."""
    return re.findall(r"^\| `([^`]+)`(?: \([a-z]+\))? \|", path.read_text(), flags=re.MULTILINE)


def test_every_method_and_params_section_has_its_row_in_the_docs():
    """A new method's row in the README's methods table; every section of params.yaml (each method's
    too) in docs/pipeline.md's params table."""
    readme, pipeline = table_keys(ROOT / "README.md"), table_keys(ROOT / "docs/pipeline.md")
    assert [name for name in REGISTRY if name not in readme] == [], "add its row to the README's methods table"
    sections = list(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert [section for section in sections if section not in pipeline] == [], \
        "add its row to docs/pipeline.md's params table"


def test_a_stage_says_its_outputs_persist_exactly_where_dvc_yaml_persists_them():
    """A refusal in a stage DVC ran says DVC removed its outputs (robust_cifar/stage.py), unless the stage passes
    `persist=True` to run_stage: true only where dvc.yaml marks its outputs `persist: true`, which DVC keeps."""
    persisting, claiming = set(), set()
    for name, stage in stages_of(ROOT).items():
        module, _ = command_module(stage.cmd)
        if any(out.persist for out in stage.outs):
            persisting.add(module)
        source = (ROOT / f"{module.replace('.', '/')}.py").read_text()
        calls = [node for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "run_stage"]
        if any(keyword.arg == "persist" and ast.literal_eval(keyword.value)
               for call in calls for keyword in call.keywords):
            claiming.add(module)
    assert persisting == claiming == {f"stages.{CHECK_STAGE}"}
