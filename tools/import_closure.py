"""A module's project imports, transitively, read from the source (AST): nothing is imported or run."""
from __future__ import annotations

import ast
import functools
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


def parsed(path: Path) -> ast.Module:
    status = path.stat()
    return _parsed(path.resolve(), status.st_mtime_ns, status.st_size)


def imported_modules(root: Path, path: Path) -> set[str]:
    """Project modules that `path` imports, at any depth of its code (function-level imports too)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(parsed(path)):
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
    if discovers_its_modules(path):
        found.update(f"{package}.{module.stem}" for module in path.parent.glob("*.py")
                     if module.name != "__init__.py" and module != path)
    if imports_one_by_name(path):   # the named module is BY_NAME; what any of them imports, a dep of each
        for module in path.parent.glob("*.py"):
            if defines_name(module):
                found.update(imported_modules(root, module))
    return {name for name in found if name.split(".")[0] in PACKAGES and module_file(root, name)}


def _calls(path: Path, function: str) -> list[ast.Call]:
    return [node for node in ast.walk(parsed(path)) if isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) == function or getattr(node.func, "id", None) == function)]


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
