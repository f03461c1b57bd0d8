"""The registry of training methods: name -> how to build it from its params.yaml section.

Adding a method: a file here with `NAME` and `from_params`, one entry below, a section named
after it in params.yaml, and its name in params.yaml's `methods` list.
"""
from __future__ import annotations

from robust_cifar.errors import ParamsError
from robust_cifar.params import Params
from robust_cifar.training.methods import adversarial, angular, angular_adversarial, baseline
from robust_cifar.training.methods.method import Method

REGISTRY = {module.NAME: module.from_params for module in (baseline, adversarial, angular, angular_adversarial)}


def known(name: str) -> str:
    if name not in REGISTRY:
        raise ParamsError(f"unknown method {name!r}: must be one of {', '.join(REGISTRY)}")
    return name


def build_method(name: str, params: Params) -> Method:
    """The method `name`, built from (and validating) its params section."""
    return REGISTRY[known(name)](params)


__all__ = ["Method", "REGISTRY", "build_method", "known"]
