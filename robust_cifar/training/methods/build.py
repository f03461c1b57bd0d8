"""The method a stage names, built from its own module alone: robust_cifar/training/methods/<name>.py.

Importing by name, rather than through the registry (which imports every method), keeps a stage of one
method's run independent of every other method's file. robust_cifar/code_deps.py reads the import below
and makes `robust_cifar/training/methods/${item.method}.py`, and what every method module imports, the
code deps of the stages that call it (dvc.yaml's per-run stages, whose first argument is the method).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

from robust_cifar.errors import ParamsError
from robust_cifar.params import Params
from robust_cifar.training.methods import FOLDER
from robust_cifar.training.methods.method import Method

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")   # a module of this folder, and a DVC stage name's part


def method_module(name: str) -> ModuleType:
    """The module that defines method `name`; a name no module of this folder defines is a ParamsError."""
    if not (isinstance(name, str) and NAME_PATTERN.fullmatch(name) and (Path(__file__).parent / f"{name}.py").is_file()):
        raise ParamsError(f"unknown method {name!r}: no {FOLDER}/<name>.py defines it")
    module = importlib.import_module(f"{__package__}.{name}")
    if getattr(module, "NAME", None) != name:
        raise ParamsError(f"unknown method {name!r}: {FOLDER}/{name}.py is no method "
                          "(a method module sets NAME to its file's name)")
    return module


def build_method(name: str, params: Params) -> Method:
    """The method `name`, built from (and validating) its params section."""
    return method_module(name).from_params(params)
