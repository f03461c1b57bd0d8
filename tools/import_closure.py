"""A module's project imports, transitively, read from the source (AST): nothing is imported or run."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGES = ("robust_cifar", "stages")


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
    if path.name == "__init__.py" and discovers_its_modules(path):
        found.update(f"{package}.{module.stem}" for module in path.parent.glob("*.py") if module.name != "__init__.py")
    return {name for name in found if name.split(".")[0] in PACKAGES and module_file(root, name)}


def discovers_its_modules(path: Path) -> bool:
    """A package __init__ that imports its own modules by listing them (`pkgutil.iter_modules(__path__)`,
    as the method registry does) imports every module of its folder."""
    return any(isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "iter_modules"
               and any(isinstance(arg, ast.Name) and arg.id == "__path__" for arg in node.args)
               for node in ast.walk(parsed(path)))


def import_closure(root: Path, module: str) -> set[Path]:
    """Files (relative to root) of `module` and every project module it imports, transitively,
    including the __init__.py of every package on the way (Python runs them too)."""
    seen: set[str] = set()
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
    files = {module_file(root, name) for name in seen}
    return {path.relative_to(root) for path in files if path is not None and path.stat().st_size > 0}
