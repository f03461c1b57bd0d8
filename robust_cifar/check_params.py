"""Every key of params.yaml checked at once, before any stage runs: the `check_params` stage.

Each setting is validated by the code that uses it (`from_params`); this module calls all of
them, so its rules never drift from theirs, and refuses every key that none of them read (a
typo such as `train.epochz` would otherwise be silently ignored).
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from ruamel.yaml import YAMLError

from robust_cifar.cache import ensure_cache
from robust_cifar.code_deps import CHECK_STAGE, stale_code_deps
from robust_cifar.compute import ComputeConfig
from robust_cifar.data.archive import check_local_archive
from robust_cifar.data.download import DataConfig, md5_of
from robust_cifar.data.split import SplitConfig
from robust_cifar.errors import ParamsError, UserError
from robust_cifar.conditions import knn_k
from robust_cifar.evaluation.robustness import RobustnessConfig
from robust_cifar.machine import usable_cores
from robust_cifar.model import ModelConfig
from robust_cifar.outputs import OUTPUT_FOLDERS, linked_output
from robust_cifar.params import Params, get_dotted, parse_yaml
from robust_cifar.perturbations.perturb import PerturbSettings
from robust_cifar.reporting.provenance import preset_name
from robust_cifar.reporting.umap_plot import UmapConfig
from robust_cifar.training.methods.registry import (REGISTRY, artifact_name, build_method, listed_methods,
                                                     registry_problem)
from robust_cifar.training.train import TrainConfig

SEEDS = ("split", "plan", "umap")
CHECKED = "params.yaml is valid\n"   # what the stage writes: never another text, so it makes no stage below it stale
DOWNLOAD_STAGE = "download"   # its name in dvc.yaml


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


def refuse_odd_keys(tree: dict, source: str, section: str = "") -> None:
    """Refuse a key params.yaml cannot mean: one that is no name (`1:`, `~:`, `true:`), or a dotted one (`train.epochs:
    5` at the top level was read by no stage and refused by none, while DVC's params diff failed on it)."""
    for key, value in tree.items():
        where = f"`{section}.{key}`" if section else f"`{key}`"
        if not isinstance(key, str):
            shown = "null" if key is None else str(key).lower() if isinstance(key, bool) else f"the number {key}"
            inside = f" in `{section}`" if section else ""
            raise ParamsError(f"{source}: a key{inside} reads as {shown}, not a name: write each key as a name such as "
                              "`epochs`")
        if "." in key:
            first, _, rest = key.partition(".")
            raise ParamsError(f"{source}: the key {where} holds a dot: write it nested, `{rest}:` under `{first}:` "
                              "(a dotted name is how `-S` and the docs name a nested key)")
        if isinstance(value, dict):
            refuse_odd_keys(value, source, f"{section}.{key}" if section else key)


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
    refuse_odd_keys(params.raw, params.source)
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
    listed = listed_methods(params)
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
    refuse_linked_output_folders()
    compute = ComputeConfig.from_params(params)
    compute.check_machine()
    warning = compute.oversubscription(usable_cores())
    if warning:
        print(warning, file=sys.stderr)
    data = DataConfig.from_params(params)
    if data.archive and not Path(data.archive).exists() and stage_is_current(DOWNLOAD_STAGE, params):
        print(f"note: the local archive {data.archive} (`data.archive`) is not here, and nothing needs it now: the "
              "download stage's outputs are current (pulled, or kept); it is needed again where that stage reruns "
              "(its params or code edited)", file=sys.stderr)
    elif data.archive:
        check_local_archive(Path(data.archive), data.archive_md5)


def refuse_linked_output_folders(root: Path = Path(".")) -> None:
    """Refuse an output folder that is a symbolic link (models/ on a bigger disk): DVC refuses an output that lies
    outside the project, but only when it saves it, after the stage's work (a training's hours). Linked files are
    DVC's own where its cache type is `symlink`, so only folders are looked at."""
    for top in OUTPUT_FOLDERS:
        linked = [root / top] if (root / top).is_symlink() else [
            Path(folder) / name for folder, names, _ in os.walk(root / top) for name in names
            if os.path.islink(os.path.join(folder, name))]
        if linked:
            raise linked_output(linked[0])


def stage_is_current(name: str, params: Params, root: Path = Path(".")) -> bool:
    """Whether DVC would leave the stage `name`, one of dvc.yaml's plain stages, as it is: dvc.lock records it with
    dvc.yaml's command, deps, params and outputs, and each dep and output on disk has its recorded md5 and each
    param its recorded value (what `dvc status <name>` sees, for a stage whose deps no stage rewrites but this one,
    whose output never changes). False where any of it differs or cannot be read."""
    try:
        stages = parse_yaml((root / "dvc.yaml").read_text())["stages"]
        declared = stages[name]
        locked = parse_yaml((root / "dvc.lock").read_text())["stages"][name]
        paths = lambda entries: sorted(entry if isinstance(entry, str) else next(iter(entry)) for entry in entries)
        recorded = locked.get("params", {}).get("params.yaml", {})
        if (locked["cmd"] != declared["cmd"] or sorted(recorded) != sorted(declared.get("params", []))
                or sorted(entry["path"] for entry in locked["deps"]) != paths(declared["deps"])
                or sorted(entry["path"] for entry in locked["outs"]) != paths(declared["outs"])
                or any(not params.has(key) or get_dotted(params.raw, key) != value for key, value in recorded.items())):
            return False
        checked = set(paths(stages[CHECK_STAGE]["outs"]))   # rewritten with CHECKED before this stage runs
        files = {entry["path"]: entry for entry in locked["deps"] + locked["outs"]}
        return all(entry.get("hash") == "md5" and entry["md5"] == (
            hashlib.md5(CHECKED.encode()).hexdigest() if path in checked else md5_of(root / path))
            for path, entry in files.items())
    except (OSError, KeyError, TypeError, AttributeError, StopIteration, YAMLError):
        return False


def check_code_deps(dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """Refuse a dvc.yaml whose stages do not list exactly the modules their commands import (a module that gained
    an import and `python -m tools.sync_dvc_yaml` not run): DVC would not rerun a stage when a module it runs
    but does not list changes. This stage depends on every stage's code, so any code edit brings it here first."""
    if not dvc_yaml.is_file():   # the stage run by hand outside a project
        return
    try:
        stale = stale_code_deps(parse_yaml(dvc_yaml.read_text())["stages"], dvc_yaml.parent)
    except SyntaxError as error:   # the closure parses every module a stage runs
        raise UserError(f"{error.filename}:{error.lineno}: {error.msg}: fix the code, then rerun") from None
    if stale:
        raise UserError(f"{dvc_yaml}: the code deps of {', '.join(stale)} are not the modules their commands import "
                        "(an import was added or removed, or a .py dep listed by hand), so DVC would miss edits of "
                        "the code they run: `python -m tools.sync_dvc_yaml` writes them, then rerun")


def warn_plots_of_other_methods(params: Params, dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """Warn where dvc.yaml's plots and artifacts, which `python -m tools.sync_dvc_yaml` writes for `methods` (DVC
    has no foreach there), were written for other methods than `methods` lists now: `dvc plots show` then fails to
    load a dropped method's files and never draws an added one's. Not a refusal: an experiment of other methods
    (`dvc exp run -S methods=[...]`, a sweep over `methods`) is sound, and cannot rewrite dvc.yaml."""
    if not dvc_yaml.is_file():   # the stage run by hand outside a project
        return
    artifacts = parse_yaml(dvc_yaml.read_text()).get("artifacts") or {}
    method_of = {artifact_name(name): name for name in REGISTRY}
    written = [method_of.get(name, name) for name in artifacts]
    listed = params.method_names()
    dropped, added = [m for m in written if m not in listed], [m for m in listed if m not in written]
    if dropped or added:
        what = "; ".join(part for part in (
            dropped and f"name {', '.join(dropped)}, which `methods` no longer lists (`dvc plots show` will fail to "
                        "load their files)",
            added and f"lack {', '.join(added)} (`dvc plots show` will not draw their files)") if part)
        print(f"warning: {dvc_yaml}'s plots and artifacts {what}: `python -m tools.sync_dvc_yaml` rewrites them for "
              "`methods` (commit both); an experiment of other methods may ignore this", file=sys.stderr)


# --- outputs of runs the params no longer list ------------------------------------------------------

_ITEM_GROUPS = {"${item.method}": ("method", "[a-z][a-z0-9_]*"), "${item}": ("method", "[a-z][a-z0-9_]*"),
                "${item.seed}": ("seed", "[0-9]+")}
_INTERPOLATION = re.compile(r"(\$\{[^}]*\})")


def _looped_output(template: str) -> re.Pattern | None:
    """The paths a looped stage's output template names, as a pattern with the run's method (and seed); None
    where it interpolates more than the loop's item (`${seeds.figures}`: not one path per run)."""
    pattern, seen = "", set()
    for part in _INTERPOLATION.split(template):
        if not _INTERPOLATION.fullmatch(part):
            pattern += re.escape(part)
        elif part not in _ITEM_GROUPS:
            return None
        else:
            name, form = _ITEM_GROUPS[part]
            pattern += f"(?P={name})" if name in seen else f"(?P<{name}>{form})"
            seen.add(name)
    return re.compile(pattern)


def stale_outputs(stages: dict, methods: list[str], seeds: list[int], root: Path = Path(".")) -> list[Path]:
    """The outputs, found under `root`, of the per-run and per-method stages of dvc.yaml's `stages` (a matrix over
    methods and seeds, or a foreach over methods) for a method or seed that `methods` and `seeds` no longer list.

    DVC never removes them: a dropped method's model, logs and figures stayed beside the run's (`dvc plots show`
    drew them, a publication copied them), and a dropped seed's per-seed reports stayed in the folders each
    aggregate depends on, so the lock recorded files a clone never pulls (its status then never clean)."""
    stale: set[Path] = set()
    for stage in stages.values():
        if not (isinstance(stage, dict) and ("matrix" in stage or "foreach" in stage)):
            continue
        looped = stage.get("do", stage)
        for out in looped.get("outs", []) if isinstance(looped, dict) else []:
            template = out if isinstance(out, str) else next(iter(out), "")
            pattern = _looped_output(template)
            if pattern is None:
                continue
            for path in root.glob(_INTERPOLATION.sub("*", template)):
                match = pattern.fullmatch(path.relative_to(root).as_posix())
                if match and (match["method"] not in methods
                              or "seed" in match.groupdict() and int(match["seed"]) not in seeds):
                    stale.add(path)
    return sorted(stale)


def _in_dvc_cache(path: Path, odb) -> bool:
    """Whether DVC's cache holds every file of this output (so removing it loses nothing)."""
    files = [path] if path.is_file() else [each for each in path.rglob("*") if each.is_file()]
    return bool(files) and all(Path(odb.oid_to_path(hashlib.md5(each.read_bytes()).hexdigest())).is_file()
                               for each in files)


def recorded_outputs(lock: Path) -> set[Path]:
    """Every output dvc.lock records, of any stage it still holds (DVC keeps the entries of dropped stages)."""
    stages = (parse_yaml(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    return {Path(out["path"]) for stage in stages.values() if isinstance(stage, dict)
            for out in stage.get("outs", []) if isinstance(out, dict) and "path" in out}


def remove_stale_outputs(params: Params, dvc_yaml: Path = Path("dvc.yaml"), lock: Path = Path("dvc.lock")) -> None:
    """Remove the stale_outputs of dvc.yaml that dvc.lock records and DVC's cache holds (listing the method or seed
    again restores them from DVC's run cache, without rerunning), and name any it does not hold, which stay. A file
    DVC never recorded is the user's, whatever its name: left alone."""
    if not dvc_yaml.is_file():   # the stage run by hand outside a project: no outputs of DVC's to tidy
        return
    found = stale_outputs(parse_yaml(dvc_yaml.read_text())["stages"], params.method_names(), params.train_seeds())
    if not found:   # the common case: neither the lock (thousands of lines) nor DVC is read
        return
    recorded = recorded_outputs(lock)
    stale = [path for path in found if path in recorded]
    if not stale:
        return
    from dvc.repo import Repo

    with Repo(".") as repo:
        cached = {path: _in_dvc_cache(path, repo.cache.local) for path in stale}
    removed = [path for path in stale if cached[path]]
    for path in removed:
        if path.is_dir() and not path.is_symlink():   # a link (a cache of symlinks) goes, never what it points to
            shutil.rmtree(path)
        else:
            path.unlink()
        for folder in path.parents:   # reports/seeds/<method>/, once its last seed is gone
            if folder in OUTPUT_FOLDERS or folder == Path(".") or any(folder.iterdir()):
                break
            folder.rmdir()
    if removed:
        print(f"removed {_counted(removed)} of methods or seeds params.yaml no longer lists ({_shown(removed)}): "
              "DVC's cache keeps them (`dvc gc -w` would not: it keeps what the workspace uses; `dvc gc --all-commits "
              "--all-experiments` what any commit or experiment does), and listing them again restores them without "
              "rerunning")
    kept = [path for path in stale if not cached[path]]
    if kept:
        print(f"warning: kept {_counted(kept)} of methods or seeds params.yaml no longer lists that DVC's cache "
              f"does not hold (changed since DVC recorded them, or its cache was cleaned): {_shown(kept)}; remove "
              "them by hand once they are not needed", file=sys.stderr)


def _counted(paths: list[Path]) -> str:
    return f"{len(paths)} output{'s' * (len(paths) > 1)}"


def _shown(paths: list[Path], most: int = 4) -> str:
    return ", ".join(map(str, paths[:most])) + (f" and {len(paths) - most} more" if len(paths) > most else "")
