"""A copy of this project with a tiny generated archive and tiny params, driven through the dvc CLI; reproduced once
per test run in a process of its own (main, start_build), which every pytest-xdist worker waits for."""
from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
import yaml

from robust_cifar.data.download import md5_of
from robust_cifar.params import set_dotted
from tests import archives
from tests.forked_runs import forked_env

ROOT = Path(__file__).resolve().parent.parent
# What a fresh clone holds that the pipeline needs; outputs, caches and environments stay behind.
# DVC's outputs and the local environment at the top level only (robust_cifar/data/ is code), and
# what no copy needs at any depth
TOP_LEVEL_NOT_COPIED = {".venv", ".git", "data", "models", "reports", ".cache", ".pytest_cache", "dvc.lock", ".whl",
                        "tests"}
ANYWHERE_NOT_COPIED = shutil.ignore_patterns("__pycache__", "cache", "tmp", "*.pyc")


def not_copied(source: Path):
    """The `ignore` of shutil.copytree for a copy of the project at `source`."""
    def ignored(folder: str, names: list[str]) -> set[str]:
        top = TOP_LEVEL_NOT_COPIED & set(names) if Path(folder) == source else set()
        return top | ANYWHERE_NOT_COPIED(folder, names)
    return ignored

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
METHODS = tuple(PARAMS["methods"])   # every method of the study
SEED = 0   # the tiny project trains one seed per method; tests/test_pipeline.py adds a second
ALL_STAGES = {"check_params", "download", "split", "perturb", "summarize", "curves", "examples"} | {
    f"{stage}@{method}-{SEED}" for stage in ("train", "embed", "evaluate", "robustness") for method in METHODS} | {
    f"{stage}@{method}" for stage in ("aggregate", "umap_plot") for method in METHODS}

TINY_PARAMS = {
    "data.archive": "tiny.tar.gz",
    "model.width": 4,
    "train.epochs": 2,
    "seeds.train": [SEED],
    "seeds.figures": SEED,
    "compute.eval_batch_size": 64,
    "compute.device": "cpu",
    # tiny convolutions run fastest on one thread; and a CPU sweep's workers (one core each on CI) then
    # run with the numerics of the reproduced project, so its experiments rerun only what their params change
    "compute.threads": 1,
    "compute.fast": False,   # fp32 on every CPU, bf16 units or not (check_params refuses bf16 without them)
    "umap.plot_samples": 40,
    "umap.n_neighbors": 5,
    # every registered attack runs, each as cheaply as it can still move an image
    "attack.eps_255": [0, 6.375, 32],
    "attack.pgd.steps": 2,
    "attack.apgd_ce.iterations": 4,
    "attack.apgd_dlr.iterations": 4,
    "attack.apgd_t.iterations": 2,
    "attack.apgd_t.targets": 2,
    "attack.soft_knn_pgd.temperatures": [0.05],
    "attack.soft_knn_pgd.steps": 2,
    "attack.soft_knn_apgd_ce.temperatures": [0.05],
    "attack.soft_knn_apgd_ce.iterations": 3,
    "attack.soft_knn_apgd_dlr.temperatures": [0.05],
    "attack.soft_knn_apgd_dlr.iterations": 3,
    "attack.guide_samples.steps": 2,
    "attack.transfer.steps": 2,
    # every method's own section: small batches, the fewest steps of a training attack
    **{f"{method}.{key}": value for method in METHODS
       for key, value in (("batch_size", 16), ("per_class", 2), ("steps", 1)) if key in PARAMS[method]},
}


# Where each stage process of a tiny project writes the params keys it read (tests/test_guards.py).
PARAMS_TRACE = ".params-trace"
BUILD_TIMEOUT_S = 1800   # a tiny pipeline's build takes 2-4 minutes of one core; only a lost builder takes this long


def dvc_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # one numba cache for every copy, so umap-learn compiles once per machine, not once per test
    env["NUMBA_CACHE_DIR"] = str(ROOT / ".cache" / "numba")
    env.setdefault("GIT_AUTHOR_NAME", "tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@localhost")
    env["DVC_NO_ANALYTICS"] = "1"
    return forked_env(env)   # the stages DVC runs fork from a process that has imported torch (tests/forked_runs.py)


def communicate_or_show_where(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """`process.communicate(timeout=timeout)`; where the process has not ended by then, a failure that shows where
    each of its Python threads was (faulthandler's dump on SIGABRT, where it was started with
    PYTHONFAULTHANDLER=1), not only that it hung."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.communicate(timeout=timeout)
    process.send_signal(signal.SIGABRT)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    pytest.fail(f"{' '.join(map(str, process.args))} had not ended after {timeout} s; where its threads were:\n"
                f"{stderr[-6000:]}")


def warm_umap_cache() -> subprocess.Popen | None:
    """Compile umap-learn's numba functions into the shared cache (dvc_env's NUMBA_CACHE_DIR) in a process of
    its own, beside the tiny pipeline's first stages (one thread each), so that its first UMAP stage loads them
    (about 2 s) instead of compiling them (about 30 s). Compiled here or there, the machine code, and so every
    UMAP, is the same. Once per cache: the first caller (of the pytest-xdist workers, or of the sessions on
    this clone) leaves a marker there; None for the others, whose UMAP stages come long after it is warm."""
    cache = Path(dvc_env()["NUMBA_CACHE_DIR"])
    cache.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(cache / "warmed-by-tests", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return None
    code = ("import numpy as np; from robust_cifar.reporting.umap_plot import fit_umap; "
            "x = np.random.default_rng(0).normal(size=(60, 128)).astype(np.float32); "
            "x /= np.linalg.norm(x, axis=1, keepdims=True); "
            f"fit_umap(x, {TINY_PARAMS['umap.n_neighbors']}, {PARAMS['umap']['min_dist']}, seed=0).transform(x[:40])")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dvc_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def trace_env(project: Path) -> dict[str, str]:
    (project / PARAMS_TRACE).mkdir(exist_ok=True)
    return {"ROBUST_CIFAR_PARAMS_TRACE": str(project / PARAMS_TRACE)}


def run(project: Path, *command: str, check: bool = True, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=project, env={**dvc_env(), **(env or {})}, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(project: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess:
    return run(project, "python", "-m", "dvc", *args, check=check, env=env)   # forked (tests/forked_runs.py)


def create_tiny_project(destination: Path) -> Path:
    shutil.copytree(ROOT, destination, ignore=not_copied(ROOT))
    archives.write_official_archive(destination / "tiny.tar.gz", train_per_class=20, test_per_class=6)
    params = yaml.safe_load((destination / "params.yaml").read_text())
    for key, value in TINY_PARAMS.items():
        set_dotted(params, key, value)
    set_dotted(params, "data.archive_md5", md5_of(destination / "tiny.tar.gz"))   # what DVC records of the archive
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (destination / ".gitignore").write_text((destination / ".gitignore").read_text() + f"/{PARAMS_TRACE}/\n")
    run(destination, "git", "init", "-q")
    run(destination, "git", "add", "-A")
    run(destination, "git", "commit", "-qm", "tiny project")
    return destination


def reproduce_tiny_project(destination: Path) -> Path:
    """create_tiny_project, then `dvc repro` of every stage once, each recording the params keys it read."""
    project = create_tiny_project(destination)
    warming = warm_umap_cache()
    try:
        result = dvc(project, "repro", env=trace_env(project))
    finally:
        if warming:
            warming.wait()
    if ran_stages(result.stdout) != ALL_STAGES:
        raise AssertionError(f"`dvc repro` ran {sorted(ran_stages(result.stdout))}, not every stage:\n{result.stdout}")
    return project


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def stages_of(root: Path) -> dict[str, object]:
    """DVC's parsed stages of the project at `root`, by name (`train@baseline-0`)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {stage.name: stage for stage in repo.index.stages}


def declared_params(stage) -> set[str]:
    """The params.yaml entries (keys or sections) a stage declares under `params`."""
    return {key for dep in stage.deps if type(dep).__name__ == "ParamsDependency" for key in dep.params}


def covers(entry: str, key: str) -> bool:
    """A declared entry (a key, or a section) covers the key itself and every key under it."""
    return key == entry or key.startswith(f"{entry}.")


def stale_stages(project: Path, *targets: str) -> set[str]:
    """Stages whose own dependencies changed (`dvc status`); not yet their downstream. With `targets`, of those
    stages alone (`dvc status <stage>`: a quarter of the time of every stage's status on the tiny project).

    DVC's own status, called in this process: the same answer as `dvc status --json` in about
    half the time (no interpreter and dvc import per call), which the key-by-key tests repeat ~40 times.
    DVC parses params.yaml once per stage that reads it; here once per call (a fifth of the call's time here),
    each stage getting its own copy of what it parsed: nothing changes params.yaml during a call.
    """
    from dvc.dependency import param
    from dvc.repo import Repo

    parsed, load_path = {}, param.load_path

    def load_once(path, fs, **options):
        key = (id(fs), path, tuple(sorted(options.items())))
        if key not in parsed:
            parsed[key] = load_path(path, fs, **options)
        return copy.deepcopy(parsed[key])

    # from inside the project, as the CLI: elsewhere DVC names each stage by its dvc.yaml's relative path
    with contextlib.chdir(project), Repo(".") as repo, pytest.MonkeyPatch.context() as patch:
        patch.setattr(param, "load_path", load_once)
        return set(repo.status(targets=list(targets) or None))


def dag_edges(project: Path) -> list[tuple[str, str]]:
    """(upstream, downstream) stage pairs of `dvc dag`."""
    return re.findall(r'"([^"]+)" -> "([^"]+)"', dvc(project, "dag", "--dot").stdout)


def downstream_closure(project: Path, stages: set[str], edges: list[tuple[str, str]] | None = None) -> set[str]:
    edges = dag_edges(project) if edges is None else edges
    closure, frontier = set(stages), list(stages)
    while frontier:
        stage = frontier.pop()
        for source, target in edges:
            if source == stage and target not in closure:
                closure.add(target)
                frontier.append(target)
    return closure


def beside(destination: Path, suffix: str) -> Path:
    """A build's marker files, beside its project: .claimed, .log, .ok, .failed."""
    return destination.with_name(f"{destination.name}.{suffix}")


def main(destination: Path) -> None:
    """`python -m tests.pipeline_project DESTINATION`: reproduce_tiny_project in a process of its own (start_build),
    then DESTINATION.ok, or DESTINATION.failed saying why; whoever waits for the project reads one of the two."""
    try:
        reproduce_tiny_project(destination)
        outcome, text = "ok", ""
    except BaseException:   # a failed assertion, a failed command, an interrupt: the waiting tests say why
        outcome, text = "failed", traceback.format_exc()
    writing = beside(destination, "writing")
    writing.write_text(text)
    writing.rename(beside(destination, outcome))


def start_build(destination: Path) -> subprocess.Popen | None:
    """Starts reproducing the tiny pipeline at `destination` in a process of its own (main), unless another
    pytest-xdist worker of this run already did: the first to claim it builds it for all."""
    try:
        os.close(os.open(beside(destination, "claimed"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return None
    with open(beside(destination, "log"), "wb") as log:
        builder = subprocess.Popen([sys.executable, "-m", "tests.pipeline_project", str(destination)], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)

    def reap():   # a builder killed before it could say so still ends the wait, with its exit code
        code = builder.wait()
        if not (beside(destination, "ok").exists() or beside(destination, "failed").exists()):
            beside(destination, "failed").write_text(f"the builder exited with code {code}")
    threading.Thread(target=reap, daemon=True).start()
    return builder


def wait_for_build(destination: Path, timeout: float = BUILD_TIMEOUT_S) -> Path:
    """The project start_build reproduces at `destination`, once it is; a failed build fails the test, saying why."""
    deadline = time.monotonic() + timeout
    while not beside(destination, "ok").exists():
        if beside(destination, "failed").exists():
            pytest.fail(f"the tiny pipeline was not reproduced (log: {beside(destination, 'log')}):\n"
                        f"{beside(destination, 'failed').read_text()}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"the tiny pipeline was not reproduced in {timeout:.0f} s: {destination}", pytrace=False)
        time.sleep(0.5)
    return destination


if __name__ == "__main__":
    main(Path(sys.argv[1]))
