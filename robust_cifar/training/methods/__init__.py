"""The registry of training methods: every module of this package that defines NAME is one.

A method module defines NAME, OBJECTIVE (its objective's class: the loss the figures group it by),
`from_params(params) -> Method`, and optionally REFERENCE = True (the one method every other is
compared with and attacked through) and WRITE_UP (the write-up's decision and clean / perturbed test
accuracy). Adding a method: a file here, a section named after it in params.yaml, its name in
params.yaml's `methods` list, then `python -m tools.sync_dvc_yaml` (docs/extending.md).
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Optional

from robust_cifar.errors import ParamsError
from robust_cifar.params import Params
from robust_cifar.training.methods.method import Method


def _discover() -> dict[str, ModuleType]:
    # tools/import_closure.py sees this loop and makes every module here a code dep of a stage that imports the registry
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    return {module.NAME: module for module in modules if hasattr(module, "NAME")}


REGISTRY = _discover()   # name -> module, in name order
_references = [name for name, module in REGISTRY.items() if getattr(module, "REFERENCE", False)]
if len(_references) != 1:
    raise ImportError(f"exactly one method must set REFERENCE = True, not {_references}")
REFERENCE_METHOD = _references[0]


def known(name: str) -> str:
    if name not in REGISTRY:
        raise ParamsError(f"unknown method {name!r}: must be one of {', '.join(REGISTRY)}")
    return name


def build_method(name: str, params: Params) -> Method:
    """The method `name`, built from (and validating) its params section."""
    return REGISTRY[known(name)].from_params(params)


def loss_name(name: str) -> str:
    """The loss the method trains on ("cross-entropy", "angular"): losses of one name share an axis."""
    return REGISTRY[name].OBJECTIVE.loss_name


def write_up(name: str) -> Optional[tuple[str, float, float]]:
    """The write-up's (decision, clean %, perturbed %) for the method, or None where it has none."""
    return getattr(REGISTRY[name], "WRITE_UP", None)


__all__ = ["Method", "REFERENCE_METHOD", "REGISTRY", "build_method", "known", "loss_name", "write_up"]
