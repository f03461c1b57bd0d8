"""Which project files each stage of dvc.yaml runs: its command module's imports, transitively, read from the
source (AST: nothing is imported or run). `python -m tools.sync_dvc_yaml` writes them as the stages' code deps;
the check_params stage refuses a dvc.yaml whose code deps are not these (a module that gained an import DVC
does not know of would leave its stage's results stale when that module changes)."""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PACKAGES = ("robust_cifar", "stages")
# A module that imports one module of its folder by name (the method a stage names: robust_cifar/training/methods/
# build.py) makes that module's file a dep under this name: dvc.yaml's matrix value for the stage's method.
BY_NAME = "${item.method}"


def module_file(root: Path, module: str) -> Path | None:
    """The file of a project module (`robust_cifar.training.methods` -> robust_cifar/training/methods/__init__.py)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def _parsed(path: Path, mtime_ns: int, size: int) -> ast.Module:
    """A file's syntax tree, parsed once per version of the file (every stage's closure shares most files)."""
    return ast.parse(path.read_text(), filename=str(path))


def version(path: Path) -> tuple[Path, int, int]:
    status = path.stat()
    return path.resolve(), status.st_mtime_ns, status.st_size


def parsed(path: Path) -> ast.Module:
    return _parsed(*version(path))


@functools.lru_cache(maxsize=None)
def _calls_by_name(path: Path, mtime_ns: int, size: int) -> dict[str, list[ast.Call]]:
    """A file's calls by the name called (`f(...)` and `x.f(...)` under "f"), found in one walk per version."""
    found: dict[str, list[ast.Call]] = {}
    for node in ast.walk(_parsed(path, mtime_ns, size)):
        if isinstance(node, ast.Call):
            for name in {getattr(node.func, "attr", None), getattr(node.func, "id", None)} - {None}:
                found.setdefault(name, []).append(node)
    return found


@functools.lru_cache(maxsize=None)
def _own_imports(path: Path, mtime_ns: int, size: int, package: str) -> frozenset[str]:
    """The modules a file's import statements name (a pure function of the file's version: cached)."""
    found = set()
    for node in ast.walk(_parsed(path, mtime_ns, size)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # `from package import module` imports a submodule
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return frozenset(found)


def imported_modules(root: Path, path: Path) -> set[str]:
    """Project modules that `path` imports, at any depth of its code (function-level imports too)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = set(_own_imports(*version(path), package))
    if discovers_its_modules(path):
        found.update(f"{package}.{module.stem}" for module in path.parent.glob("*.py")
                     if module.name != "__init__.py" and module != path)
    if imports_one_by_name(path):   # the named module is BY_NAME; what any of them imports, a dep of each
        for module in path.parent.glob("*.py"):
            if defines_name(module):
                found.update(imported_modules(root, module))
    return {name for name in found if name.split(".")[0] in PACKAGES and module_file(root, name)}


def _calls(path: Path, function: str) -> list[ast.Call]:
    return _calls_by_name(*version(path)).get(function, [])


def discovers_its_modules(path: Path) -> bool:
    """A module that imports the modules of its folder by listing them (`pkgutil.iter_modules`, as the method
    registry does) imports every module of its folder."""
    return bool(_calls(path, "iter_modules"))


def imports_one_by_name(path: Path) -> bool:
    """A module that imports one module of its folder by a name it is given (`importlib.import_module(f"...")`,
    as build_method does): which one, the stage's command says (BY_NAME)."""
    return any(call.args and isinstance(call.args[0], ast.JoinedStr) for call in _calls(path, "import_module"))


def defines_name(path: Path) -> bool:
    """A method module: it sets NAME at its top level."""
    def targets(node) -> list:
        return node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return any(isinstance(target, ast.Name) and target.id == "NAME" for node in parsed(path).body for target in targets(node))


def import_closure(root: Path, module: str) -> set[Path]:
    """Files (relative to root) of `module` and every project module it imports, transitively,
    including the __init__.py of every package on the way (Python runs them too); a module imported by
    name as `<folder>/${item.method}.py` (BY_NAME), unless a module of the closure imports all of that folder."""
    seen: set[str] = set()
    by_name: set[Path] = set()
    every_module_of: set[Path] = set()
    frontier = [module]
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        frontier += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        path = module_file(root, name)
        if path is not None:
            frontier += sorted(imported_modules(root, path) - seen)
            if imports_one_by_name(path):
                by_name.add(path.parent.relative_to(root) / f"{BY_NAME}.py")
            if discovers_its_modules(path):
                every_module_of.add(path.parent.relative_to(root))
    files = {module_file(root, name) for name in seen}
    return ({path.relative_to(root) for path in files if path is not None and path.stat().st_size > 0}
            | {path for path in by_name if path.parent not in every_module_of})


COMMAND = re.compile(r"python -m (\S+)")
# The stage every other depends on: its deps are every stage's code (any code edit reruns it, and it checks the
# code deps of all) and params.yaml; its output never changes, so rerunning it makes no stage below it stale.
CHECK_STAGE = "check_params"


def stage_body(stage: dict) -> dict:
    """A stage of dvc.yaml, or the `do:` of a foreach one."""
    return stage["do"] if "foreach" in stage else stage


def command_module(stage: dict, root: Path) -> str | None:
    """The project module a stage's command runs (`python -m stages.train ...`), or None for a command of the
    user's own (a shell line, a module outside the project), whose deps are the user's to declare."""
    command = stage_body(stage).get("cmd")
    match = COMMAND.match(command) if isinstance(command, str) else None
    if match is None or match.group(1).split(".")[0] not in PACKAGES or module_file(root, match.group(1)) is None:
        return None
    return match.group(1)


def closures(stages: dict, root: Path) -> dict[str, list[str]]:
    """What each of dvc.yaml's `stages` that runs a project module should list as its code deps: the sorted import
    closure of that module (CHECK_STAGE: of every such stage's, a looped stage's by-name module aside)."""
    modules = {name: command_module(stage, root) for name, stage in stages.items()}
    found = {name: sorted(str(path) for path in import_closure(root, module))
             for name, module in modules.items() if module is not None}
    if CHECK_STAGE in found:
        found[CHECK_STAGE] = sorted({path for paths in found.values() for path in paths if BY_NAME not in path})
    return found


def declared_code(stage: dict) -> list[str]:
    """The sorted `.py` deps a stage of dvc.yaml lists."""
    return sorted(dep for dep in stage_body(stage).get("deps") or [] if isinstance(dep, str) and dep.endswith(".py"))


def stale_code_deps(stages: dict, root: Path) -> list[str]:
    """The stages whose code deps are not their closures."""
    wanted = closures(stages, root)
    return [name for name, stage in stages.items() if name in wanted and declared_code(stage) != wanted[name]]
