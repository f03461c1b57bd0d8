"""The registry of training methods: every module of this package that defines NAME is one.

A method module defines NAME, LABEL (a few letters: its columns in `dvc exp show`, which must fit a
terminal), OBJECTIVE (its objective's class: the loss the figures group it by),
`from_params(params) -> Method`, and optionally REFERENCE = True (the one method every other is
compared with and attacked through), ON_A_CPU (its own settings the CPU presets change) and WRITE_UP
(the write-up's decision and clean / perturbed test accuracy). Adding a method: a file here, a section
named after it in params.yaml, its name in params.yaml's `methods` list, then
`python -m tools.sync_dvc_yaml` (docs/extending.md).
"""
from __future__ import annotations

import importlib
import pkgutil
import re
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
LABEL_PATTERN = re.compile(r"[a-z]{1,7}")   # short: five methods' three columns fit 200 characters
_labels = [getattr(module, "LABEL", "") for module in REGISTRY.values()]
if not all(LABEL_PATTERN.fullmatch(label) for label in _labels) or len(set(_labels)) != len(_labels):
    raise ImportError(f"every method needs its own LABEL of 1-7 lowercase letters, not {dict(zip(REGISTRY, _labels))}")


def known(name: str) -> str:
    if name not in REGISTRY:
        raise ParamsError(f"unknown method {name!r}: must be one of {', '.join(REGISTRY)}")
    return name


def build_method(name: str, params: Params) -> Method:
    """The method `name`, built from (and validating) its params section."""
    return REGISTRY[known(name)].from_params(params)


def label(name: str) -> str:
    """The method's few letters in the headline metrics (reports/metrics.json) and `dvc exp show`."""
    return REGISTRY[name].LABEL


def loss_name(name: str) -> str:
    """The loss the method trains on ("cross-entropy", "angular"): losses of one name share an axis."""
    return REGISTRY[name].OBJECTIVE.loss_name


def on_a_cpu() -> dict[str, object]:
    """The params the CPU presets set for the methods' own sections ({"<method>.<key>": value}): what a
    method declares it trains with there (ON_A_CPU in its file)."""
    return {f"{name}.{key}": value for name, module in REGISTRY.items()
            for key, value in getattr(module, "ON_A_CPU", {}).items()}


def shaped_like(objective: type, perturbation: Optional[type], params: Params) -> str:
    """The first registered method (name order) whose objective is an `objective` and whose training images
    are perturbed by a `perturbation` (None: clean images): how tools and tests pick a method by what it
    is, not by its name."""
    for name in REGISTRY:
        method = build_method(name, params)
        trained_on = method.training_perturbation
        if isinstance(method.objective, objective) and (
                trained_on is None if perturbation is None else isinstance(trained_on, perturbation)):
            return name
    raise LookupError(f"no registered method trains a {objective.__name__} on "
                      f"{'clean images' if perturbation is None else perturbation.__name__}")


def write_up(name: str) -> Optional[tuple[str, float, float]]:
    """The write-up's (decision, clean %, perturbed %) for the method, or None where it has none."""
    return getattr(REGISTRY[name], "WRITE_UP", None)


__all__ = ["Method", "REFERENCE_METHOD", "REGISTRY", "build_method", "known", "label", "loss_name", "on_a_cpu",
           "shaped_like", "write_up"]
