"""Every key of params.yaml checked at once, before any stage runs: the `check_params` stage.

Each setting is validated by the code that uses it (`from_params`); this module calls all of
them, so its rules never drift from theirs, and refuses every key that none of them read (a
typo such as `train.epochz` would otherwise be silently ignored).
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

from robust_cifar.cache import ensure_cache
from robust_cifar.compute import ComputeConfig
from robust_cifar.data.download import DataConfig, check_local_archive
from robust_cifar.data.split import SplitConfig
from robust_cifar.errors import ParamsError
from robust_cifar.evaluation.evaluate import knn_k
from robust_cifar.evaluation.robustness import RobustnessConfig
from robust_cifar.machine import usable_cores
from robust_cifar.model import ModelConfig
from robust_cifar.params import Params
from robust_cifar.perturbations.perturb import PerturbSettings
from robust_cifar.reporting.provenance import preset_name
from robust_cifar.reporting.umap_plot import UmapConfig
from robust_cifar.training.methods.registry import REFERENCE_METHOD, REGISTRY, build_method, registry_problem
from robust_cifar.training.train import TrainConfig

SEEDS = ("split", "plan", "umap")


# Keys that were renamed: an old spelling is refused with its new key, so a value is never read in
# the wrong unit (every eps is now in 1/255; it was in pixels) or silently dropped.
MOVED = {"attack.eps": "attack.eps_255", "attack.pgd_steps": "attack.pgd.steps",
         "attack.pgd_step_scale": "attack.pgd.step_scale", "attack.pgd_restarts": "attack.pgd.restarts",
         "attack.knn_temperatures": "the temperatures of attack.soft_knn_pgd, attack.soft_knn_apgd_ce and attack.soft_knn_apgd_dlr"}


def moved_key(key: str, value) -> str | None:
    """The one-line refusal of a key this project no longer reads under that name, or None."""
    if key == "fgm.eps" or key.endswith(".fgm.eps"):
        converted = f"{value * 255:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "eps x 255"
        return (f"`{key}` = {value!r} is in pixel units, which this project no longer reads: every eps is set in "
                f"1/255 now; write `{key}_255: {converted}` instead")
    if key in MOVED:
        return f"`{key}` was renamed: write {MOVED[key]} instead (same values)"
    return None


def refuse_moved_keys(params: Params) -> None:
    for key in params.leaf_keys():
        node = params.raw
        for part in key.split("."):
            node = node[part]
        hint = moved_key(key, node)
        if hint:
            raise ParamsError(f"{params.source}: {hint}")


def validate_params(params: Params) -> None:
    """Raise ParamsError for the first bad, missing or unknown key (and for method modules that make no registry)."""
    problem = registry_problem()
    if problem:
        raise ParamsError(problem)
    refuse_moved_keys(params)
    DataConfig.from_params(params)
    SplitConfig.from_params(params)
    for name in SEEDS:
        params.seed(name)
    figures_seed = params.seed("figures")
    if figures_seed not in params.train_seeds():
        raise ParamsError(f"{params.source}: `seeds.figures` = {figures_seed} is invalid: must be one of seeds.train "
                          f"{params.train_seeds()} (the models the figures show); {params.fix_hint('seeds.figures')}")
    ModelConfig.from_params(params)
    TrainConfig.from_params(params)
    ComputeConfig.from_params(params)
    PerturbSettings.from_params(params)
    knn_k(params)
    preset_name(params)
    RobustnessConfig.from_params(params)
    UmapConfig.from_params(params)
    written = params.raw.get("methods") if isinstance(params.raw.get("methods"), list) else []
    unknown = [name for name in written if isinstance(name, str) and name not in REGISTRY]
    if unknown:   # named, with the registered ones, before the list's shape rule speaks of it only in general
        raise ParamsError(f"{params.source}: `methods` lists {unknown[0]!r}, which is no method: each must be one of "
                          f"{', '.join(REGISTRY)}; {params.fix_hint('methods')}")
    listed = params.method_names()
    if REFERENCE_METHOD not in listed:
        raise ParamsError(f"{params.source}: `methods` = {listed} lacks {REFERENCE_METHOD!r}, the method every other is "
                          f"compared with and attacked through (transfer): add it to the list")
    # a registered method's section is checked even when the method is not listed, so a typo there
    # is caught before the method is switched back on
    for name in dict.fromkeys(listed + [name for name in REGISTRY if params.has(name)]):
        build_method(name, params)
    refuse_unknown_keys(params)


def refuse_unknown_keys(params: Params) -> None:
    unknown = [key for key in params.leaf_keys() if key not in params.read]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(params.read), n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else "remove it"
        raise ParamsError(f"{params.source}: unknown key `{key}` (nothing reads it): {hint}")


def check_on_this_machine(params: Params) -> None:
    """validate_params, then what only the machine that runs the stages can say: its device, its bf16
    units and the local archive (there, and the one its md5 names). The check_params stage runs this,
    and so does every tool of the project before it hands overrides to DVC."""
    validate_params(params)
    ensure_cache()
    compute = ComputeConfig.from_params(params)
    compute.check_machine()
    warning = compute.oversubscription(usable_cores())
    if warning:
        print(warning, file=sys.stderr)
    data = DataConfig.from_params(params)
    if data.archive:
        check_local_archive(Path(data.archive), data.archive_md5)

