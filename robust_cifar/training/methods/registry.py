"""The registry of training methods: every module of this folder that defines NAME is one.

A method module defines NAME (its file's name), LABEL (a few letters: its columns in `dvc exp show`,
which must fit a terminal), OBJECTIVE (its objective's class: the loss the figures group it by),
`from_params(params) -> Method`, and optionally ON_A_CPU (its own settings the CPU presets change) and
WRITE_UP (the write-up's decision and clean / perturbed test accuracy). Which method is the reference is
said once, in the package (`REFERENCE_METHOD`). Importing this imports every method: a stage of one run
builds its method through `build.build_method` instead. Adding a method: docs/extending.md.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Optional

from robust_cifar.errors import ParamsError
from robust_cifar.params import Params
from robust_cifar.training.methods import FOLDER, REFERENCE_METHOD
from robust_cifar.training.methods.build import build_method
from robust_cifar.training.methods.method import Method


def _discover() -> dict[str, ModuleType]:
    # robust_cifar/code_deps.py sees this loop: every module here is a code dep of a stage that imports the registry
    modules = [importlib.import_module(f"{__package__}.{info.name}")
               for info in pkgutil.iter_modules([str(Path(__file__).parent)])]
    return {module.NAME: module for module in modules if hasattr(module, "NAME")}


REGISTRY = _discover()   # name -> module, in name order
LABEL_PATTERN = re.compile(r"[a-z]{1,7}")   # short: five methods' three columns fit 200 characters


def registry_problem() -> Optional[str]:
    """What keeps the method modules from making a registry, in one line (None when nothing does): check_params
    refuses it before any stage runs, a method added by hand being a user's edit, not a crash."""
    misnamed = {name: module.__name__.rsplit(".", 1)[1] for name, module in REGISTRY.items()
                if module.__name__.rsplit(".", 1)[1] != name}
    if misnamed:
        return (f"{', '.join(f'{FOLDER}/{stem}.py' for stem in misnamed.values())} sets NAME to "
                f"{', '.join(map(repr, misnamed))}: a method's file is named after its NAME (stages find it so)")
    if REFERENCE_METHOD not in REGISTRY:
        return f"REFERENCE_METHOD = {REFERENCE_METHOD!r} ({FOLDER}/__init__.py) names no method"
    labels = {name: getattr(module, "LABEL", "") for name, module in REGISTRY.items()}
    bad = {name: label for name, label in labels.items()
           if not (isinstance(label, str) and LABEL_PATTERN.fullmatch(label)) or list(labels.values()).count(label) > 1}
    if bad:
        return f"every method needs a LABEL of its own, 1-7 lowercase letters: not {bad}"
    return None


def listed_methods(params: Params) -> list[str]:
    """params.yaml's `methods`, refused in one line where it lacks the reference method, which every other is
    compared with (summarize) and attacked through (transfer)."""
    listed = params.method_names()
    if REFERENCE_METHOD not in listed:
        raise ParamsError(f"{params.source}: `methods` = {listed} lacks {REFERENCE_METHOD!r}, the method every other is "
                          f"compared with and attacked through (transfer): add it to the list")
    return listed


def known(name: str) -> str:
    if name not in REGISTRY:
        raise ParamsError(f"unknown method {name!r}: must be one of {', '.join(REGISTRY)}")
    return name


def label(name: str) -> str:
    """The method's few letters in the headline metrics (reports/metrics.json) and `dvc exp show`."""
    return REGISTRY[name].LABEL


def loss_name(name: str) -> str:
    """The loss the method trains on ("cross-entropy", "angular"): losses of one name share an axis."""
    return REGISTRY[name].OBJECTIVE.loss_name


def artifact_name(name: str) -> str:
    """The method's model as a DVC artifact (dvc.yaml's `artifacts`): DVC's names take letters, digits and dashes."""
    return name.replace("_", "-")


def on_a_cpu() -> dict[str, object]:
    """The params the CPU presets set for the methods' own sections ({"<method>.<key>": value}): what a
    method declares it trains with there (ON_A_CPU in its file)."""
    return {f"{name}.{key}": value for name, module in REGISTRY.items()
            for key, value in getattr(module, "ON_A_CPU", {}).items()}


def shaped_like(objective: type, perturbation: Optional[type], params: Params) -> str:
    """The reference method if it is one, else the first registered method (name order), whose objective is an
    `objective` and whose training images are perturbed by a `perturbation` (None: clean images): how tools
    and tests pick a method by what it is, not by its name (a new method never displaces the reference)."""
    for name in sorted(REGISTRY, key=lambda name: name != REFERENCE_METHOD):
        method = build_method(name, params)
        trained_on = method.training_perturbation
        if isinstance(method.objective, objective) and (
                trained_on is None if perturbation is None else isinstance(trained_on, perturbation)):
            return name
    raise LookupError(f"no registered method trains a {objective.__name__} on "
                      f"{'clean images' if perturbation is None else perturbation.__name__}")


WRITE_UP_K = 3   # the write-up's "knn" decision: a vote of its 3 nearest neighbours


def write_up(name: str) -> Optional[tuple[str, float, float]]:
    """The write-up's (decision, clean %, perturbed %) for the method, or None where it has none."""
    return getattr(REGISTRY[name], "WRITE_UP", None)


__all__ = ["Method", "REFERENCE_METHOD", "REGISTRY", "WRITE_UP_K", "artifact_name", "build_method", "known", "label",
           "loss_name", "on_a_cpu", "shaped_like", "write_up"]
