"""params.yaml, read and validated in one place.

Each stage asks for the sections it needs (`load_params().train()`); a section is checked as a
whole the moment it is asked for, before any heavy work, and every bad value is reported with
its dotted key, the value and what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from robust_cifar.methods import METHODS
from robust_cifar.perturb import PerturbSettings



class ParamsError(ValueError):
    """A value in params.yaml that the pipeline cannot use."""


def _fix_hint(key: str) -> str:
    return f"edit it in params.yaml or override it with `dvc exp run -S {key}=...`"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """What a key may hold, in code (`check`) and in words for the error message (`allowed`)."""
    check: Callable[[Any], bool]
    allowed: str
    as_float: bool = False


def _real(check: Callable[[float], bool], allowed: str) -> Rule:
    return Rule(lambda v: _number(v) and check(v), allowed, as_float=True)


def _whole(check: Callable[[int], bool], allowed: str) -> Rule:
    return Rule(lambda v: _integer(v) and check(v), allowed)


POSITIVE_INT = _whole(lambda v: v > 0, "a whole number > 0")
NON_NEGATIVE_INT = _whole(lambda v: v >= 0, "a whole number >= 0")
SEED = _whole(lambda v: 0 <= v < 2**63, "a whole number >= 0")
POSITIVE = _real(lambda v: v > 0, "a number > 0")
NON_NEGATIVE = _real(lambda v: v >= 0, "a number >= 0")
PROBABILITY = _real(lambda v: 0 <= v <= 1, "a number in [0, 1]")
OPEN_FRACTION = _real(lambda v: 0 < v < 1, "a number strictly between 0 and 1")
BELOW_ONE = _real(lambda v: 0 <= v < 1, "a number in [0, 1)")
ALPHA = _real(lambda v: 0 < v < 90, "an angle in degrees strictly between 0 and 90")
BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
MD5 = Rule(lambda v: isinstance(v, str) and (v == "" or (len(v) == 32 and all(c in "0123456789abcdef" for c in v.lower()))),
           'an md5 of 32 hex digits, or "" to skip the check')
DEVICE = Rule(lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())),
              "auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class DataConfig:
    url: str
    md5: str
    archive: str
    archive_md5: str


@dataclass(frozen=True)
class ModelConfig:
    width: int
    embedding_dim: int
    dropout: float


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_factor: float
    lr_patience: int
    val_every: int


@dataclass(frozen=True)
class ComputeConfig:
    device: str
    fast: bool
    eval_batch_size: int


@dataclass(frozen=True)
class AngularConfig:
    alpha: float
    per_class: int


@dataclass(frozen=True)
class UmapConfig:
    fit_samples: int
    plot_samples: int
    n_neighbors: int
    min_dist: float


class Params:
    """The parsed params.yaml; each accessor validates and returns one section."""

    def __init__(self, raw: dict, source: str = "params.yaml"):
        if not isinstance(raw, dict):
            raise ParamsError(f"{source} must hold a mapping of sections, got {type(raw).__name__}")
        self.raw = raw
        self.source = source

    def value(self, key: str, rule: Rule) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"{self.source}: `{key}` is missing; add it to params.yaml ({rule.allowed})")
            node = node[part]
        if not rule.check(node):
            raise ParamsError(f"{self.source}: `{key}` = {node!r} is invalid: must be {rule.allowed}; {_fix_hint(key)}")
        return float(node) if rule.as_float else node

    def data(self) -> DataConfig:
        return DataConfig(url=self.value("data.url", TEXT), md5=self.value("data.md5", MD5).lower(),
                          archive=self.value("data.archive", TEXT),
                          archive_md5=self.value("data.archive_md5", MD5).lower())

    def train_fraction(self) -> float:
        return self.value("split.train_fraction", OPEN_FRACTION)

    def seed(self, name: str) -> int:
        return self.value(f"seeds.{name}", SEED)

    def model(self) -> ModelConfig:
        return ModelConfig(width=self.value("model.width", POSITIVE_INT),
                           embedding_dim=self.value("model.embedding_dim", POSITIVE_INT),
                           dropout=self.value("model.dropout", BELOW_ONE))

    def train(self, method: str) -> TrainConfig:
        self.method(method)
        return TrainConfig(
            epochs=self.value("train.epochs", POSITIVE_INT),
            # the angular method forms its own class-balanced batches (angular.per_class)
            batch_size=self.value("train.batch_size", POSITIVE_INT) if method != "angular" else 0,
            lr=self.value("train.lr", POSITIVE),
            momentum=self.value("train.momentum", BELOW_ONE),
            weight_decay=self.value("train.weight_decay", NON_NEGATIVE),
            lr_factor=self.value("train.lr_factor", OPEN_FRACTION),
            lr_patience=self.value("train.lr_patience", NON_NEGATIVE_INT),
            val_every=self.value("train.val_every", POSITIVE_INT),
        )

    def device(self) -> str:
        return self.value("compute.device", DEVICE)

    def compute(self) -> ComputeConfig:
        return ComputeConfig(device=self.device(), fast=self.value("compute.fast", BOOLEAN),
                             eval_batch_size=self.value("compute.eval_batch_size", POSITIVE_INT))

    def perturb(self, with_fgm: bool = True) -> PerturbSettings:
        """The perturbation definition; `with_fgm=False` for stages that never attack (eps left at 0)."""
        return PerturbSettings(
            p=self.value("perturb.p", PROBABILITY),
            brightness=self.value("perturb.jitter.brightness", BELOW_ONE),
            contrast=self.value("perturb.jitter.contrast", BELOW_ONE),
            saturation=self.value("perturb.jitter.saturation", BELOW_ONE),
            noise_std=self.value("perturb.noise.std", NON_NEGATIVE),
            noise_fraction=self.value("perturb.noise.fraction", PROBABILITY),
            fgm_eps=self.fgm_eps() if with_fgm else 0.0,
        )

    def fgm_eps(self) -> float:
        return self.value("perturb.fgm.eps", _real(lambda v: 0 <= v <= 1, "a number in [0, 1] (pixel units)"))

    def angular(self) -> AngularConfig:
        return AngularConfig(alpha=self.value("angular.alpha", ALPHA),
                             per_class=self.value("angular.per_class",
                                                  _whole(lambda v: v >= 2, "a whole number >= 2 (a class needs positive pairs)")))

    def attack_temperature(self) -> float:
        return self.value("angular.attack_temperature", POSITIVE)

    def knn_k(self) -> int:
        return self.value("knn.k", POSITIVE_INT)

    def umap(self) -> UmapConfig:
        return UmapConfig(fit_samples=self.value("umap.fit_samples", NON_NEGATIVE_INT),
                          plot_samples=self.value("umap.plot_samples", POSITIVE_INT),
                          n_neighbors=self.value("umap.n_neighbors", _whole(lambda v: v >= 2, "a whole number >= 2")),
                          min_dist=self.value("umap.min_dist", NON_NEGATIVE))

    @staticmethod
    def method(name: str) -> str:
        if name not in METHODS:
            raise ParamsError(f"unknown method {name!r}: must be one of {', '.join(METHODS)}")
        return name


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stage from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    return Params(raw, source=str(path))
