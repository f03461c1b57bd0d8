"""Sweeps (robust_cifar/sweep): the grid, the worker pool, and real sweeps of the tiny pipeline.

The end-to-end tests work on a copy of the session's reproduced tiny project with the reference method
alone, and sweep SWEEP: one experiment reruns a cheap stage (the tiny project runs on one thread, as each
of two CPU workers or one-CPU Ray tasks does, so nothing retrains), one fails. The slow
ones (pytest -m "not slow" skips them) run the sweep on two local CPU workers and on a local
multi-node Ray cluster with a Git and a DVC remote in local directories. How much faster two
workers are is a benchmark, not a test: `python -m tools.bench_sweep`.
"""
from __future__ import annotations

import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from dulwich.refs import check_ref_format
from dvc.utils.hydra import apply_overrides

from robust_cifar.params import load_params
from robust_cifar.training.methods.registry import REFERENCE_METHOD
from tests.pipeline_project import ROOT, dvc, dvc_env, run, stages_of
from tools.sweep import cli, grid, steps
from tools.sweep.cli import main
from tools.sweep.grid import Experiment, SweepError
from tools.sweep.local import Progress, clone_job, oversubscription, plan_slots, run_pool, visible_gpus

# independent experiments (evaluate and summarize): none reuses another's stages, run serially or not
GRID = ["-S", "knn.k=1,5,7,9"]
# The real sweeps' two experiments (one for each of two workers or Ray nodes): one redraws the UMAP, a cheap stage
# (the metrics stay), and one fails in evaluate: knn.k=60 passes check_params, but 40 training images have fewer
# neighbours. tools/bench_sweep.py times GRID.
SWEEP = ["-S", "umap.min_dist=0.2", "-S", "knn.k=3,60"]
GOOD, BROKEN = "min_dist=0.2,k=3", "min_dist=0.2,k=60"


# --- the grid ---------------------------------------------------------------------------------------------------

def test_grid_is_every_combination_in_flag_order_named_after_its_overrides():
    experiments = grid.experiments(["loss.alpha=30,40", "seeds.train=0,1"])
    assert [e.name for e in experiments] == ["alpha=30,train=0", "alpha=30,train=1", "alpha=40,train=0",
                                             "alpha=40,train=1"]
    assert experiments[1].set_params() == ["-S", "loss.alpha=30", "-S", "seeds.train=1"]


def test_values_split_outside_brackets_and_quotes_and_a_repeated_key_adds_values():
    assert grid.split_values('30, 40,[a,b],{x: 1, y: 2},"c,d"') == ["30", "40", "[a,b]", "{x: 1, y: 2}", '"c,d"']
    assert grid.parse_axes(["seeds.train=0", "knn.k=3", "seeds.train=1,0"]) == [
        ("seeds.train", ["0", "1"]), ("knn.k", ["3"])]
    methods = grid.experiments(["methods=[a],[a,b]"])
    assert [e.set_params() for e in methods] == [["-S", "methods=[a]"], ["-S", "methods=[a,b]"]]


def test_a_value_given_twice_is_one_experiment():
    assert [e.describe() for e in grid.experiments(["knn.k=1,1,2", "knn.k=2.0"])] == ["knn.k=1", "knn.k=2"]


def test_a_grid_too_large_to_be_meant_is_refused_before_any_experiment_is_checked():
    def grid_of(plans: int) -> list[str]:
        return [f"knn.k={','.join(map(str, range(1, 11)))}", f"seeds.plan={','.join(map(str, range(plans)))}"]

    plans = grid.MAX_EXPERIMENTS // 10
    assert len(grid.experiments(grid_of(plans))) == 10 * plans <= grid.MAX_EXPERIMENTS
    with pytest.raises(SweepError, match=f"10 x {plans + 1} = {10 * (plans + 1):,} experiments: at most "
                                         f"{grid.MAX_EXPERIMENTS:,} in one sweep"):
        grid.experiments(grid_of(plans + 1))


def test_a_bad_value_is_refused_before_any_worker_starts(tmp_path):
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        run(tmp_path, "git", *command, env=dvc_env())
    commit = cli.git(tmp_path, "rev-parse", "HEAD").stdout.strip()
    cli.check_overrides(tmp_path, commit, grid.experiments(["knn.k=1,5"]))
    with pytest.raises(SweepError, match=r"experiment k=0: .*`knn.k` = 0 is invalid"):
        cli.check_overrides(tmp_path, commit, grid.experiments(["knn.k=3,0"]))
    with pytest.raises(SweepError, match=r"experiment threads=0: .*compute.threads"):
        cli.check_overrides(tmp_path, commit, grid.experiments(["compute.threads=1,0"]))


def test_the_oversubscription_warning_counts_an_experiments_own_threads(tmp_path, monkeypatch, capsys):
    """The warning once counted params.yaml's threads only: 2 workers of experiments at -S compute.threads=2 on
    2 cores said nothing (and a Ray task reserved params.yaml's count, not the threads it ran)."""
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        run(tmp_path, "git", *command, env=dvc_env())
    commit = cli.git(tmp_path, "rev-parse", "HEAD").stdout.strip()
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())["compute"]["threads"]
    monkeypatch.setattr("robust_cifar.machine.usable_cores", lambda: committed)
    slots = plan_slots([], 1, threads=committed)
    threads = cli.check_overrides(tmp_path, commit, grid.experiments(["knn.k=1,5"]))
    assert threads == {"k=1": committed, "k=5": committed}
    cli.warn_oversubscribed(slots, threads)
    assert capsys.readouterr().err == ""
    threads = cli.check_overrides(tmp_path, commit, grid.experiments([f"compute.threads={committed},{2 * committed}"]))
    assert threads == {f"threads={committed}": committed, f"threads={2 * committed}": 2 * committed}
    monkeypatch.setattr("robust_cifar.machine.usable_cores", lambda: 2 * committed)
    cli.warn_oversubscribed(two := plan_slots([], 2, threads=committed), threads)
    assert f"2 workers x compute.threads {2 * committed} = {4 * committed} threads" in capsys.readouterr().err
    # one experiment's threads alone above the cores: check_params' warning says so; fewer workers would not help
    cli.warn_oversubscribed(two, {"threads=big": 4 * committed, "k=1": committed})
    assert capsys.readouterr().err == ""
    # one experiment keeps one worker busy, however many there are
    cli.warn_oversubscribed(plan_slots([], 3, threads=committed), {"k=1": 2 * committed})
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flag", ["knn.k", "=3", "knn.k=", "knn.k=1,,2", "knn.k=[1,2", "data.archive='a,b"])
def test_malformed_flags_are_refused(flag):
    with pytest.raises(SweepError):
        grid.experiments([flag])


def test_malformed_flag_is_a_usage_error_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-S", "knn.k", "--dry-run"])
    assert exit_info.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_names_are_valid_unique_experiment_refs():
    flags = ["loss.alpha=30", "other_loss.alpha=40",       # the same last key: full keys are used
             "data.archive=../x y@{1}.tar.gz,a.lock,-z,..,/abs/p," + "9" * 200]
    experiments = grid.experiments(flags, prefix="s1-")
    names = [e.name for e in experiments]
    assert names[0].startswith("s1-loss.alpha=30,other_loss.alpha=40,archive=")
    assert len(set(names)) == len(names) == 6
    for name in names:
        assert grid.valid_exp_name(name) and len(name) <= grid.MAX_NAME + 3
        # git's own rules (dulwich implements git check-ref-format), as DVC checks them, and no "/"
        assert check_ref_format(f"refs/exps/ab/cdef/{name}".encode()) and "/" not in name, name
    # values that sanitize to the same name still get distinct names
    twins = grid.experiments(["data.archive=a b,a_b"])
    assert [e.name for e in twins] == ["archive=a_b", "archive=a_b-2"]


@pytest.fixture
def bf16_units(monkeypatch):
    """This CPU as one with bf16 units, so the committed params (compute.fast: true) pass the machine check."""
    from robust_cifar import compute
    monkeypatch.setattr(compute, "bf16_supported", lambda device: True)


def test_a_dry_run_checks_what_this_machines_workers_cannot_run(monkeypatch, capsys):
    """CPU workers run bf16 only on a CPU with the units: refused before the sweep, not once per experiment."""
    from robust_cifar import compute
    monkeypatch.setattr(compute, "bf16_supported", lambda device: False)
    assert main(["-S", "knn.k=1,3", "--gpus", "none", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "experiment k=1: compute.fast = true asks for bf16 autocast" in captured.err
    assert main(["-S", "knn.k=1,3", "-S", "compute.fast=false", "--gpus", "none", "--dry-run"]) == 0


@pytest.mark.parametrize("workers", ["0", str(cli.MAX_WORKERS + 1), str(10**20)])
def test_workers_beyond_the_bounds_are_refused_at_once(capsys, workers):
    with pytest.raises(SystemExit) as exit_info:
        main(["-S", "knn.k=1", "--workers", workers, "--dry-run"])
    assert exit_info.value.code == 2
    assert f"--workers {workers}: must be from 1 to {cli.MAX_WORKERS}" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, words", [(["--tail", "-5"], "--tail -5: must be 0 or more"),
                                             (["--ray", "auto", "--gpus", "none"], "on a Ray cluster use --cpus-per-exp"),
                                             (["--ray", "auto", "--workers", "2"], "on a Ray cluster use --cpus-per-exp"),
                                             (["--gpus-per-exp", "1"], "--gpus-per-exp: for a Ray cluster only"),
                                             (["--git-remote", "up", "--ray-workdir", "/x"],
                                              "--git-remote, --ray-workdir: for a Ray cluster only")])
def test_options_that_cannot_apply_are_refused_at_once(capsys, arguments, words):
    with pytest.raises(SystemExit) as exit_info:
        main(["-S", "knn.k=1", *arguments, "--dry-run"])
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_dry_run_lists_the_experiments_with_what_a_worker_adds(capsys, bf16_units):
    """The device and params.yaml's thread count: every `-S` the experiment will run with."""
    assert main(["-S", "knn.k=1,3", "-S", "seeds.umap=0", "--dry-run"]) == 0
    threads = yaml.safe_load((ROOT / "params.yaml").read_text())["compute"]["threads"]
    worker = f"-S compute.device={'cuda' if visible_gpus() else 'cpu'} -S compute.threads={threads}"
    assert capsys.readouterr().out.splitlines() == [f"k=1,umap=0\t{worker} -S knn.k=1 -S seeds.umap=0",
                                                    f"k=3,umap=0\t{worker} -S knn.k=3 -S seeds.umap=0"]


def test_a_dry_run_checks_every_experiment_as_the_sweep_does(capsys, bf16_units):
    assert main(["-S", "knn.k=3,0", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "experiment k=0: params.yaml with its overrides: `knn.k` = 0 is invalid" in captured.err


def test_a_dry_run_checks_the_workers_gpus_as_the_sweep_does(capsys, bf16_units):
    assert main(["-S", "knn.k=1", "--gpus", "99", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--gpus 99: no GPU 99 on this machine" in captured.err


def test_the_ray_path_needs_the_dvc_remote_committed_and_reachable_from_any_clone(tmp_path):
    config = """[core]\n    autostage = true\n    remote = shared\n['remote "shared"']\n    url = ../../store\n""" \
             """['remote "s3remote"']\n    url = s3://bucket/path\n"""
    assert cli.committed_remotes(config) == ("shared", {"shared": "../../store", "s3remote": "s3://bucket/path"})
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(config)
    run(tmp_path, "git", "init", "-q")
    run(tmp_path, "git", "add", "-A")
    run(tmp_path, "git", "commit", "-qm", "remotes")
    with pytest.raises(SweepError, match="relative path '../../store'"):
        cli.check_dvc_remote(tmp_path, "HEAD", "")
    cli.check_dvc_remote(tmp_path, "HEAD", "s3remote")
    with pytest.raises(SweepError, match="not in the committed .dvc/config"):
        cli.check_dvc_remote(tmp_path, "HEAD", "local-only")


# --- workers ------------------------------------------------------------------------------------------------------

def test_visible_gpus_follow_cuda_visible_devices_else_torch():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, lambda: 8) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-1a,GPU-2b"}, lambda: 8) == ["GPU-1a", "GPU-2b"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, lambda: 8) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, lambda: 8) == ["0"]   # CUDA stops at an invalid id
    assert visible_gpus({}, lambda: 2) == ["0", "1"]
    assert visible_gpus({}, lambda: 0) == []


def test_gpus_are_chosen_among_those_this_machine_sees():
    assert cli.parse_gpus("all", visible=["0", "1"]) == ["0", "1"] and cli.parse_gpus("none", visible=["0"]) == []
    assert cli.parse_gpus("1", visible=["0", "1"]) == ["1"]
    with pytest.raises(SweepError, match="--gpus 7: no GPU 7 on this machine .visible: none.; use --gpus all"):
        cli.parse_gpus("7", visible=[])


def test_one_worker_per_gpu_pinned_more_workers_share_them_and_cpu_workers_see_no_gpu():
    slots = plan_slots(["0", "1"], None, threads=8)
    assert [(s.label, s.env["CUDA_VISIBLE_DEVICES"], s.env["OMP_NUM_THREADS"]) for s in slots] == [
        ("gpu 0", "0", "8"), ("gpu 1", "1", "8")]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in plan_slots(["4", "7"], 4, threads=2)] == ["4", "7", "4", "7"]
    cpu = plan_slots([], 2, threads=1)
    assert [(s.label, s.env["CUDA_VISIBLE_DEVICES"], s.env["OMP_NUM_THREADS"]) for s in cpu] == [
        ("cpu 0", "", "1"), ("cpu 1", "", "1")]
    assert len(plan_slots([], None, threads=2)) == 1
    # the device and the thread count are params of every experiment the slot runs (DVC records them)
    assert slots[0].set_params() == ["-S", "compute.device=cuda", "-S", "compute.threads=8"]
    assert cpu[1].set_params() == ["-S", "compute.device=cpu", "-S", "compute.threads=1"]
    # an experiment's own value of one of them is its only one (the dry run listed `compute.threads` twice)
    (own,) = grid.experiments(["compute.threads=4"])
    assert cpu[1].set_params(own) == ["-S", "compute.device=cpu", "-S", "compute.threads=4"]


def test_workers_keep_params_threads_and_say_when_they_oversubscribe_the_cores():
    """Workers once ran at cores / workers threads: a sweep of umap.min_dist on 2 cores retrained every model
    (another thread count, other bits) and its experiments differed from `dvc repro`'s for a reason not named."""
    assert oversubscription(plan_slots([], 1, threads=2), 2, cores=2) is None
    warning = oversubscription(plan_slots([], 2, threads=2), 2, cores=2)
    assert warning.startswith("sweep: warning: 2 workers x compute.threads 2 = 4 threads on 2 CPU cores") and \
        "the same" in warning and "\n" not in warning


def test_pool_reports_a_failure_with_its_log_and_finishes_the_others(tmp_path):
    experiments = grid.experiments(["knn.k=1,0,5,7"])
    running, most = set(), [0]
    lock = threading.Lock()

    def job(experiment: Experiment, index: int, log: Path) -> None:
        with lock:
            running.add(experiment.name)
            most[0] = max(most[0], len(running))
        time.sleep(0.2)
        with lock:
            running.discard(experiment.name)
        if experiment.name == "k=0":
            steps.run_logged([sys.executable, "-c", "import sys; print('knn.k = 0 is invalid'); sys.exit(3)"],
                             tmp_path, log, os.environ.copy())

    out = io.StringIO()
    outcomes = run_pool(experiments, plan_slots([], 2, threads=1), job, tmp_path, Progress(4, out))
    assert [(o.name, o.ok) for o in outcomes] == [("k=1", True), ("k=0", False), ("k=5", True), ("k=7", True)]
    assert most[0] == 2
    text = out.getvalue()
    assert text.count(" ok ") == 3 and "FAILED k=0" in text and "exited with 3" in text
    assert "| knn.k = 0 is invalid" in text and str(tmp_path / "k=0.log") in text
    assert [line[:5] for line in text.splitlines() if line.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]


def test_a_crashing_job_fails_only_its_experiment(tmp_path):
    def job(experiment: Experiment, index: int, log: Path) -> None:
        if experiment.name == "k=2":
            raise OSError("disk full")

    out = io.StringIO()
    outcomes = run_pool(grid.experiments(["knn.k=1,2,3"]), plan_slots([], 1, threads=1), job, tmp_path,
                        Progress(3, out))
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "OSError: disk full" in out.getvalue() and "OSError: disk full" in (tmp_path / "k=2.log").read_text()


def test_each_worker_clones_once_and_runs_its_experiments_pinned_to_its_gpu(tmp_path, monkeypatch):
    calls = []

    def record(command, cwd, log, env):
        calls.append((Path(cwd).name, env["CUDA_VISIBLE_DEVICES"], command))
        if Path(cwd).name == "workers" and command[:2] == ["git", "clone"]:
            Path(command[-1]).mkdir()

    monkeypatch.setattr(steps, "run_logged", record)
    slots = plan_slots(["3", "5"], None, threads=2)
    (tmp_path / "workers").mkdir()
    job = clone_job(Path("/main/repo"), "c0ffee", "/main/repo/.dvc/cache", tmp_path / "workers", slots, force=False)
    outcomes = run_pool(grid.experiments(["knn.k=1,2,3,4"]), slots, job, tmp_path, Progress(4, io.StringIO()))
    assert all(o.ok for o in outcomes)
    gpu_of = {"worker-0": "3", "worker-1": "5"}
    assert all(gpu == gpu_of.get(where, gpu) for where, gpu, _ in calls)
    runs = {command[command.index("-n") + 1]: gpu for _, gpu, command in calls if command[3:5] == ["exp", "run"]}
    settings = [command[command.index("-n") + 2:] for _, _, command in calls if command[3:5] == ["exp", "run"]]
    assert all(setting[:4] == ["-S", "compute.device=cuda", "-S", "compute.threads=2"] for setting in settings)
    assert runs == {o.name: o.where.split()[1] for o in outcomes} and set(runs.values()) <= {"3", "5"}
    assert sum(command[:2] == ["git", "clone"] for _, _, command in calls) == len(set(runs.values()))
    pushes = [command[3:] for _, _, command in calls if command[3:5] == ["exp", "push"]]
    assert sorted(pushes) == [["exp", "push", "--no-cache", "/main/repo", f"k={k}"] for k in (1, 2, 3, 4)]


def test_a_worker_finds_the_shared_cache_of_a_project_whose_path_is_not_ascii(tmp_path):
    """DVC writes its config in ASCII: the worker's `dvc cache dir` of the absolute path failed in `proj ü`."""
    project = tmp_path / "proj ü"
    workspace = project / ".dvc" / "tmp" / "worker-0"
    for folder in (project, workspace):
        folder.mkdir(parents=True, exist_ok=True)
        run(folder, "git", "init", "-q")
        dvc(folder, "init", "-q")
    log = tmp_path / "worker.log"
    steps.use_cache(workspace, str(project / ".dvc" / "cache"), log, steps.command_env())
    assert dvc(workspace, "cache", "dir").stdout.strip() == str(project / ".dvc" / "cache")


@pytest.mark.parametrize("stopped_at", ["cache dir", "pool"])
def test_a_sweep_stopped_early_leaves_no_folder_behind(tmp_path, monkeypatch, stopped_at):
    """Ctrl-C between making the workers' folder and the pool once left that folder (empty) behind."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    def cache_dir(root, *args):
        if stopped_at == "cache dir":
            stop()
        return subprocess.CompletedProcess(args, 0, stdout=str(tmp_path / "cache"))

    monkeypatch.setattr(cli, "repo_root", lambda path: tmp_path)
    monkeypatch.setattr(cli, "git", lambda root, *args, check=True: subprocess.CompletedProcess(args, 0, stdout="c0ffee\n"))
    monkeypatch.setattr(cli, "check_overrides", lambda root, commit, experiments, slot: {"k=1": 1, "k=5": 1})
    monkeypatch.setattr(cli, "committed_params", lambda root, commit: load_params(ROOT / "params.yaml"))
    monkeypatch.setattr(cli, "existing_names", lambda root: set())
    monkeypatch.setattr(cli, "run_dvc", cache_dir)
    monkeypatch.setattr(cli, "run_pool", stop)
    args = cli.build_parser().parse_args([*GRID, "--workers", "2", "--gpus", "none"])
    with pytest.raises(KeyboardInterrupt):
        cli.sweep(args, grid.experiments(["knn.k=1,5"]))
    assert list((tmp_path / ".dvc" / "tmp" / "sweep").iterdir()) == []


# --- real sweeps of the tiny pipeline -----------------------------------------------------------------------------

def copy_project(source: Path, destination: Path) -> Path:
    return Path(shutil.copytree(source, destination, symlinks=True))


@pytest.fixture(scope="module")
def sweep_base(reproduced_project, built_once) -> Path:
    """The reproduced tiny project, baseline only, committed with its dvc.lock (what the workers clone): made once
    for both real sweeps, which may run on two pytest-xdist workers; each sweeps a copy."""
    def build(base: Path) -> None:
        copy_project(reproduced_project, base)
        params = yaml.safe_load((base / "params.yaml").read_text())
        params["methods"] = [REFERENCE_METHOD]   # the one method check_params requires
        (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        dvc(base, "repro")               # reruns check_params, summarize and curves (they read `methods`) only
        run(base, "git", "add", "-A")
        run(base, "git", "commit", "-qm", "baseline only, reproduced")
    return built_once("sweep-base", build)


def sweep(project: Path, *args: str, env: dict[str, str] | None = None, python: str = "python",
          ) -> subprocess.CompletedProcess:
    """The sweep as a user starts it; by default forked, with what it starts (tests/forked_runs.py)."""
    return run(project, python, "-m", "tools.sweep", *args, check=False, env=env)


def experiments_shown(project: Path) -> dict[str, dict]:
    """`dvc exp show --json` of HEAD: experiment name -> its params, metrics and outs."""
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    return {exp["name"]: exp["revs"][0]["data"] for base in shown for exp in base.get("experiments") or []}


def headline(data: dict) -> dict:
    return data["metrics"]["reports/metrics.json"]["data"]


def out_hashes(data: dict) -> dict[str, str]:
    return {path: out["hash"] for path, out in data["outs"].items()}


@pytest.mark.long(seconds=70)
def test_sweep_on_two_cpu_workers_makes_ordinary_experiments_and_reports_a_broken_one(sweep_base, tmp_path, capsys):
    project = copy_project(sweep_base, tmp_path / "project")
    # refusals in-process (what runs is the command's `main`, as below): knn.k=0 never gets as far as a worker
    assert main(["-S", "knn.k=1,0", "--gpus", "none", "--repo", str(project)]) == 2
    assert "`knn.k` = 0 is invalid" in capsys.readouterr().err
    result = sweep(project, *SWEEP, "--workers", "2", "--gpus", "none")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "on 2 workers (cpu 0, cpu 1)" in out
    assert sorted(line.split()[1:3] for line in out.splitlines() if line.startswith("[")) == [
        ["FAILED", BROKEN], ["ok", GOOD]]
    assert "`knn.k` = 60 is invalid" in out and f"failed: {BROKEN}" in out    # the failure's log, in the output
    logs = list((project / ".dvc" / "tmp" / "sweep").glob(f"*/{BROKEN}.log"))
    assert len(logs) == 1 and "`knn.k` = 60 is invalid" in logs[0].read_text()
    assert not list((project / ".dvc" / "tmp" / "sweep").glob("*/workers/*"))    # clones removed, logs kept

    # ordinary experiments of the main repository, with their params and metrics
    shown = experiments_shown(project)
    assert set(shown) == {GOOD}
    assert shown[GOOD]["params"]["params.yaml"]["data"]["umap"]["min_dist"] == 0.2
    assert run(project, "git", "status", "--porcelain").stdout == ""       # the workspace was not touched

    figure = project / f"reports/umap/{REFERENCE_METHOD}.png"
    before = figure.read_bytes()
    assert yaml.safe_load((project / "params.yaml").read_text())["umap"]["min_dist"] != 0.2
    dvc(project, "exp", "apply", GOOD)
    assert yaml.safe_load((project / "params.yaml").read_text())["umap"]["min_dist"] == 0.2
    applied = json.loads((project / "reports/metrics.json").read_text())
    assert applied == headline(shown[GOOD])
    assert figure.read_bytes() != before                      # the experiment ran with its own min_dist
    dvc(project, "exp", "branch", GOOD, "umap-0.2")
    assert yaml.safe_load(run(project, "git", "show", "umap-0.2:params.yaml").stdout)["umap"]["min_dist"] == 0.2

    # names already taken are refused before anything runs
    assert main(["-S", "umap.min_dist=0.2", "-S", "knn.k=3", "--gpus", "none", "--repo", str(project)]) == 2
    assert f"already named {GOOD}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def serial_reference(sweep_base, tmp_path_factory) -> dict[str, dict]:
    """SWEEP's good experiment's params written into params.yaml and run with plain `dvc repro` (the same
    stages `dvc exp run` runs, without its bookkeeping), shown as `dvc exp show --json` shows an experiment:
    its headline metrics and the hash of every output of its pipeline."""
    project = copy_project(sweep_base, tmp_path_factory.mktemp("serial") / "project")
    (experiment,) = [e for e in grid.experiments(SWEEP[1::2]) if e.name == GOOD]
    # DVC's own `-S` edit, with the numerics a one-CPU Ray task gives its experiment (they change the bits)
    apply_overrides(project / "params.yaml", ["compute.device=cpu", "compute.threads=1",
                                              *(f"{key}={value}" for key, value in experiment.overrides)])
    dvc(project, "repro")
    pipeline = set(stages_of(project))   # dvc.lock keeps the entries of the methods sweep_base dropped
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    return {GOOD: {"metrics": {"reports/metrics.json": {"data": metrics}},
                   "outs": {out["path"]: {"hash": out["md5"]} for name, stage in lock.items() if name in pipeline
                            for out in stage.get("outs", [])}}}


def assert_same_results(shown: dict[str, dict], serial: dict[str, dict]) -> None:
    assert set(shown) == set(serial) == {GOOD}
    for name in serial:
        assert headline(shown[name]) == headline(serial[name]), name
        assert out_hashes(shown[name]) == out_hashes(serial[name]), name    # every output byte-identical


@pytest.fixture
def ray_cluster():
    """A head without CPUs and two 1-CPU worker nodes on 127.0.0.1, in a process of its own."""
    pytest.importorskip("ray")
    temp = Path(tempfile.mkdtemp(prefix="ray-"))   # short: Ray's socket paths must stay under 108 characters
    env = {"RAY_TMPDIR": str(temp), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    with open(temp / "cluster.log", "w") as log:
        holder = subprocess.Popen([sys.executable, "-m", "tests.ray_cluster", "2"], cwd=ROOT, env={**dvc_env(), **env},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 180)
        line = holder.stdout.readline() if ready else ""
        assert line.startswith("address "), f"no Ray cluster: {(temp / 'cluster.log').read_text()[-3000:]}"
        yield line.split()[1], env
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=90)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.long(seconds=140)
def test_sweep_on_a_ray_cluster_lists_every_experiment_with_the_serial_results(
        sweep_base, serial_reference, ray_cluster, tmp_path, capsys):
    address, ray_env = ray_cluster
    git_remote, dvc_store = tmp_path / "git-remote.git", tmp_path / "dvc-remote"
    run(tmp_path, "git", "init", "-q", "--bare", str(git_remote))
    dvc_store.mkdir()
    owner = copy_project(sweep_base, tmp_path / "owner")
    run(owner, "git", "remote", "add", "origin", str(git_remote))
    dvc(owner, "remote", "add", "-d", "shared", str(dvc_store))
    run(owner, "git", "commit", "-qam", "a DVC remote every worker can reach")

    assert main([*SWEEP, "--ray", address, "--repo", str(owner)]) == 2     # the workers could not clone HEAD
    assert "is not on the Git remote" in capsys.readouterr().err
    run(owner, "git", "push", "-q", "origin", "HEAD")
    cli.warn_unpushed(owner, "")
    assert "outputs are not on the DVC remote" in capsys.readouterr().err   # warned: dvc push first
    dvc(owner, "push")                 # the committed outputs: workers pull what their experiment does not change
    cli.warn_unpushed(owner, "")
    assert "not on the DVC remote" not in capsys.readouterr().err

    # a real driver (Ray's workers run real interpreters whatever starts it)
    result = sweep(owner, *SWEEP, "--ray", address, "--ray-workdir", str(tmp_path / "nodes"), env=ray_env,
                   python=sys.executable)
    assert result.returncode == 1, result.stdout + result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert sorted(line.split()[1:3] for line in progress) == [["FAILED", BROKEN], ["ok", GOOD]]
    assert "`knn.k` = 60 is invalid" in result.stdout, result.stdout     # the remote log, shown by the driver
    assert len({line.rsplit("(node ", 1)[1] for line in progress}) == 2, result.stdout   # both worker nodes ran some

    shown = experiments_shown(owner)
    serial = serial_reference
    assert_same_results(shown, serial)
    # the outputs came through the DVC remote into the driver's cache: applying needs nothing else
    dvc(owner, "exp", "apply", GOOD)
    assert json.loads((owner / "reports/metrics.json").read_text()) == headline(serial[GOOD])
    remote_refs = run(owner, "git", "ls-remote", str(git_remote), "refs/exps/*").stdout
    assert remote_refs.count("refs/exps/") == 1


def test_a_stopped_ray_sweep_cancels_every_pending_task(monkeypatch, tmp_path):
    """Ray's cancel interrupts a task's main thread, where run_in_group stops its `dvc exp run`."""
    from tools.sweep import on_ray

    cancelled, registered, reserved, specs = [], [], [], []

    class FakeRay:
        cloudpickle = type("cp", (), {"register_pickle_by_value": staticmethod(registered.append)})

        def init(self, **kwargs): pass
        def shutdown(self): pass
        def cluster_resources(self): return {"CPU": 2}
        def cancel(self, reference): cancelled.append(reference)
        def wait(self, references, num_returns): raise KeyboardInterrupt   # Ctrl-C while waiting
        def remote(self, function):
            return type("task", (), {"options": lambda self, **kw: reserved.append(kw["num_cpus"]) or self,
                                     "remote": lambda self, spec: specs.append(spec) or f"ref-{spec['name']}"})()

    fake = FakeRay()
    monkeypatch.setattr(on_ray, "import_ray", lambda: fake)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(KeyboardInterrupt):
        on_ray.run_on_ray("auto", grid.experiments(["knn.k=1,5"]), "url", "c0ffee", "", False, {"k=1": 2, "k=5": 4},
                          None, None, str(tmp_path), tmp_path, Progress(2, io.StringIO()))
    assert sorted(cancelled) == ["ref-k=1", "ref-k=5"]
    # each task reserves, and runs, its own experiment's threads
    assert reserved == [2, 4] and [spec["threads"] for spec in specs] == [2, 4]
    assert [module.__name__ for module in registered] == ["tools.sweep.steps"]   # all a node needs


def test_a_refusal_of_a_key_the_sweep_did_not_set_says_to_set_it_with_the_sweeps_own_flag(capsys, bf16_units):
    """The study's eps moved out of the attacks' sweep: the fix is another -S of this command, not `dvc exp run`."""
    assert main(["-S", "perturb.fgm.eps_255=5,6", "--gpus", "none", "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "does not contain the study's eps `perturb.fgm.eps_255` = 5" in error
    assert "add `-S attack.eps_255=...` to the command (or edit it in params.yaml)" in error and "dvc exp run" not in error
