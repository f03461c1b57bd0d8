"""Run a grid of DVC experiments in parallel: one worker per visible GPU, N CPU workers, or a Ray cluster.

    python -m tools.sweep -S angular.alpha=30,40,45 -S perturb.fgm.eps_255=4,8   # one worker per GPU
    python -m tools.sweep -S knn.k=1,3,5 --workers 2 --gpus none           # two CPU workers
    python -m tools.sweep -S angular.alpha=30,40 --ray auto                 # a Ray cluster

Every combination of the -S values is one experiment, named after its overrides
(`alpha=30,train=0`), run with `dvc exp run` in a clone of the committed HEAD (uncommitted changes
are not seen, unlike `dvc exp run --queue`, which takes tracked files as they are: commit first). The
results are ordinary DVC experiments of this repository: `dvc exp show`, `dvc exp apply <name>`,
`dvc exp branch <name> <branch>`.
A failed experiment is reported with the end of its log and does not stop the others; the exit
status is 1 when any failed. Values are split at commas outside brackets and quotes; repeating a
key adds values (`-S seeds.plan=0 -S seeds.plan=1`); a value containing a comma is quoted:
-S 'data.archive="a,b.tar.gz"'.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAMLError

from robust_cifar.signals import Stopped, signal_of, stop_on_signals
from tools.sweep import grid, steps
from tools.sweep.grid import SweepError
from tools.sweep.local import Progress, Slot, clone_job, oversubscription, plan_slots, run_pool, shown, visible_gpus

WORKERS = "workers"   # the folder of a sweep's folder that holds its worker clones
MAX_WORKERS = 64   # experiments side by side on one machine (each a clone of the repository and a process)
RAY_DEFAULTS = ("git_remote", "dvc_remote", "cpus_per_exp", "gpus_per_exp", "ray_workdir")   # the Ray group's options


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=steps.command_env())
    if check and result.returncode:
        raise SweepError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def run_dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(steps.dvc(*args), cwd=root, capture_output=True, text=True, env=steps.command_env())


def repo_root(path: str) -> Path:
    if not Path(path).is_dir():
        raise SweepError(f"--repo {path}: no such folder; name the project's checkout")
    result = git(Path(path), "rev-parse", "--show-toplevel", check=False)
    if result.returncode or not (Path(result.stdout.strip()) / ".dvc").is_dir():
        raise SweepError(f"{path} is not inside a git repository with DVC (.dvc/)")
    return Path(result.stdout.strip())


def existing_names(root: Path) -> set[str]:
    """Names of the experiments of HEAD already in this repository."""
    result = run_dvc(root, "exp", "list", "--name-only")
    return set(result.stdout.split()) if result.returncode == 0 else set()


def parse_gpus(text: str, visible: list[str] | None = None) -> list[str]:
    """`all`, `none` or ids/UUIDs among the GPUs this process sees (a GPU it cannot see would run on
    nothing: its experiments would fail, one by one, in check_params)."""
    visible = visible_gpus() if visible is None else visible
    if text == "all":
        return visible
    if text == "none":
        return []
    asked = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [gpu for gpu in asked if gpu not in visible]
    if unknown:
        raise SweepError(f"--gpus {text}: no GPU {', '.join(unknown)} on this machine (visible: "
                         f"{', '.join(visible) or 'none'}); use --gpus all, or none to run on the CPU")
    return asked


def looks_remote(url: str) -> bool:
    return "://" in url or re.match(r"^[^/]+:", url) is not None   # scheme://... or [user@]host:path


def git_remote_url(root: Path, remote: str) -> str:
    """A remote's name -> its URL; a local path -> absolute (a worker's working directory is elsewhere)."""
    named = git(root, "remote", "get-url", remote, check=False)
    url = named.stdout.strip() if named.returncode == 0 else remote
    return url if looks_remote(url) else str((root / url).resolve())


def check_commit_on_remote(root: Path, url: str, commit: str) -> None:
    listed = git(root, "ls-remote", url, check=False)
    if listed.returncode:
        raise SweepError(f"cannot read the Git remote {url}: {listed.stderr.strip()}")
    for tip in {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}:
        if tip == commit or git(root, "merge-base", "--is-ancestor", commit, tip, check=False).returncode == 0:
            return
    raise SweepError(f"commit {commit[:7]} (HEAD) is not on the Git remote {url}: the workers clone from there, "
                     "so push it first (git push)")


def committed_remotes(config: str) -> tuple[str, dict[str, str]]:
    """The default remote and every remote's url, as written in a .dvc/config text."""
    default, urls, section = "", {}, ""
    for line in config.splitlines():
        header = re.match(r"""^\s*\[\s*'?(.*?)'?\s*\]\s*$""", line)
        if header:
            section = header.group(1)
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        remote = re.fullmatch(r'remote\s+"(.+)"', section)
        if remote and key == "url":
            urls[remote.group(1)] = value
        elif section == "core" and key == "remote":
            default = value
    return default, urls


def check_dvc_remote(root: Path, commit: str, name: str) -> None:
    """The workers see only the committed .dvc/config: the remote must be there, and reachable from anywhere."""
    shown_config = git(root, "show", f"{commit}:.dvc/config", check=False)
    default, urls = committed_remotes(shown_config.stdout if shown_config.returncode == 0 else "")
    name = name or default
    if not name:
        raise SweepError("no default DVC remote in the committed .dvc/config: add one that every worker can reach "
                         "(dvc remote add -d NAME URL), commit and push it, or name one with --dvc-remote")
    if name not in urls:
        raise SweepError(f"DVC remote {name!r} is not in the committed .dvc/config, and the workers see only "
                         "committed files: add it without --local, commit and push")
    url = urls[name]
    if not looks_remote(url) and not Path(url).is_absolute():
        raise SweepError(f"DVC remote {name!r} is the relative path {url!r}, which each worker would resolve in "
                         "its own clone: use an absolute path or a URL")


def warn_unpushed(root: Path, name: str) -> None:
    """Outputs of HEAD missing on the DVC remote are recomputed by every worker that needs them."""
    status = run_dvc(root, "status", "--cloud", "--json", *(["--remote", name] if name else []))
    try:
        missing = [path for path, state in json.loads(status.stdout or "{}").items() if state == "new"]
    except json.JSONDecodeError:
        return
    if missing:
        print(f"sweep: warning: {len(missing)} outputs are not on the DVC remote (for example {missing[0]}): "
              "the workers will recompute the stages that make them; `dvc push` first", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set-param", dest="set", action="append", default=[], metavar="KEY=V1[,V2...]",
                        help="a params.yaml key and its values; the sweep is every combination of all -S flags")
    parser.add_argument("--workers", type=int, help="parallel experiments on this machine "
                        "(default: one per GPU; 1 without GPUs); more workers than GPUs share them round-robin")
    parser.add_argument("--gpus", default="all", help="GPUs to use: all (CUDA_VISIBLE_DEVICES or every GPU torch "
                        "sees), none (CPU workers) or a list such as 0,2 (default: all)")
    parser.add_argument("--name-prefix", default="", help="put before every experiment name")
    parser.add_argument("--force", action="store_true", help="replace experiments of the same names")
    parser.add_argument("--dry-run", action="store_true", help="list the experiments and stop")
    parser.add_argument("--repo", default=".", help="the repository (default: the current directory)")
    parser.add_argument("--keep-workdirs", action="store_true", help="keep the workers' clones after the sweep")
    parser.add_argument("--tail", type=int, default=25, help="log lines shown for a failed experiment")
    ray = parser.add_argument_group("Ray (an optional extra: pip install ray==2.60.0)")
    ray.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: auto (the cluster this machine "
                     "joined) or the head's HOST:PORT")
    ray.add_argument("--git-remote", default="origin", help="Git remote (name or URL) the workers clone from and "
                     "push to (default: origin); HEAD must be on it")
    ray.add_argument("--dvc-remote", default="", help="DVC remote the workers pull from and push to "
                      "(default: the repository's default remote)")
    ray.add_argument("--cpus-per-exp", type=float, default=None,
                     help="CPUs each experiment reserves (default: the threads it runs, its compute.threads)")
    ray.add_argument("--gpus-per-exp", type=float, help="GPUs each experiment reserves "
                     "(default: 1 when the cluster has GPUs, else 0)")
    ray.add_argument("--ray-workdir", default="~/.cache/robust-cifar-sweep", help="scratch directory on each node "
                     "(clones, and the node's DVC cache shared by its tasks)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        experiments = grid.experiments(args.set, args.name_prefix)
        if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
            raise SweepError(f"--workers {args.workers}: must be from 1 to {MAX_WORKERS} (one clone and one process each)")
        if args.tail < 0:
            raise SweepError(f"--tail {args.tail}: must be 0 or more log lines")
        if args.ray and (args.workers is not None or args.gpus != "all"):
            raise SweepError("--workers and --gpus are for this machine's workers; on a Ray cluster use "
                             "--cpus-per-exp and --gpus-per-exp")
        ray_only = [f"--{name.replace('_', '-')}" for name in RAY_DEFAULTS if getattr(args, name) != parser.get_default(name)]
        if not args.ray and ray_only:
            raise SweepError(f"{', '.join(ray_only)}: for a Ray cluster only; add --ray ADDRESS, or leave "
                             f"{'them' if len(ray_only) > 1 else 'it'} out")
    except SweepError as error:
        parser.error(str(error))
    stop_on_signals()   # INT, TERM and HUP stop every running experiment and its stages
    try:
        return dry_run(args, experiments) if args.dry_run else sweep(args, experiments)
    except SweepError as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stopped:
        stopped = Stopped(signal_of(stopped))
        print(f"sweep: interrupted ({stopped.name}): running experiments stopped, worker clones removed; "
              "finished experiments are in `dvc exp show`", file=sys.stderr)
        return stopped.exit_code


def warn_uncommitted(root: Path, commit: str) -> None:
    if git(root, "status", "--porcelain", "--untracked-files=no").stdout.strip():
        print(f"sweep: warning: uncommitted changes are not part of the sweep, which runs commit {commit[:7]}",
              file=sys.stderr)


def committed_params(root: Path, commit: str):
    """params.yaml of the commit the workers run."""
    from robust_cifar.params import Params, parse_yaml
    try:
        return Params(parse_yaml(git(root, "show", f"{commit}:params.yaml").stdout), source="params.yaml")
    except (SweepError, YAMLError) as error:
        raise SweepError(f"params.yaml of {commit[:7]} cannot be read ({error})") from None


def committed_threads(root: Path, commit: str) -> int:
    """The commit's `compute.threads`: what every experiment runs with, on any worker (another count would change
    every model's bits)."""
    from robust_cifar.compute import ComputeConfig
    from robust_cifar.errors import UserError
    try:
        return ComputeConfig.threads_from_params(committed_params(root, commit))
    except UserError as error:
        raise SweepError(f"params.yaml of {commit[:7]}: {error}") from None


def local_slots(args: argparse.Namespace, root: Path, commit: str) -> list[Slot] | None:
    """This machine's workers (None on a Ray cluster), each at the commit's `compute.threads`."""
    if args.ray:
        return None
    return plan_slots(parse_gpus(args.gpus), args.workers, committed_threads(root, commit))


def warn_oversubscribed(slots: list[Slot] | None, threads: dict[str, int]) -> None:
    """A line when this machine's busy workers (no more than the experiments), at the most threads any experiment
    runs, exceed its cores."""
    if not slots:
        return
    from robust_cifar.machine import usable_cores
    warning = oversubscription(slots[:len(threads)], max(threads.values()), usable_cores())
    if warning:
        print(warning, file=sys.stderr)


def check_overrides(root: Path, commit: str, experiments: list[grid.Experiment],
                    slot: Slot | None = None) -> dict[str, int]:
    """Every experiment's params as check_params will read them, refused here before any worker starts
    (a refusal inside `dvc exp run` comes after DVC edited params.yaml and deleted outputs). On this
    machine's workers (`slot`: their device and threads) also what the machine cannot run, as check_params
    checks it there; a Ray cluster's machines check that themselves. Returns the CPU threads each
    experiment runs (its own `-S compute.threads`, else the commit's)."""
    from robust_cifar.check_params import check_on_this_machine, validate_params
    from robust_cifar.compute import ComputeConfig
    from robust_cifar.errors import UserError
    from robust_cifar.params import SET_WITH_S, with_overrides
    committed = committed_params(root, commit)
    machine_checked = set()   # what the machine check reads (the compute and data sections): an archive's md5 once
    threads = {}
    for experiment in experiments:
        try:
            edited = with_overrides(committed, (slot.set_params(experiment) if slot else experiment.set_params())[1::2],
                                    set_with=SET_WITH_S)
            reads = json.dumps([edited.raw.get("compute"), edited.raw.get("data")], sort_keys=True, default=str)
            with contextlib.chdir(root):   # a local archive's path is relative to the project, as DVC runs stages
                (validate_params if slot is None or reads in machine_checked else check_on_this_machine)(edited)
            machine_checked.add(reads)
            threads[experiment.name] = ComputeConfig.threads_from_params(edited)
        except UserError as error:
            edited = git(root, "diff", "--quiet", commit, "--", "params.yaml", check=False).returncode != 0
            raise SweepError(f"experiment {experiment.name}: {error}"
                             + (f" (the workers run commit {commit[:7]}, whose params.yaml is not the one in your "
                                "workspace: commit yours first)" if edited else "")) from None
    return threads


def dry_run(args: argparse.Namespace, experiments: list[grid.Experiment]) -> int:
    """The experiments, checked as the sweep checks them (check_overrides), listed and not run."""
    root = repo_root(args.repo)
    commit = git(root, "rev-parse", "HEAD").stdout.strip()
    warn_uncommitted(root, commit)
    slots = local_slots(args, root, commit)   # as the sweep refuses them
    warn_oversubscribed(slots, check_overrides(root, commit, experiments, slots and slots[0]))
    for experiment in experiments:   # with what a worker adds: the device and params.yaml's threads
        print(f"{experiment.name}\t{' '.join(slots[0].set_params(experiment) if slots else experiment.set_params())}")
    return 0


def sweep(args: argparse.Namespace, experiments: list[grid.Experiment]) -> int:
    root = repo_root(args.repo)
    commit = git(root, "rev-parse", "HEAD").stdout.strip()
    warn_uncommitted(root, commit)
    slots = local_slots(args, root, commit)   # refused before any folder is made
    threads = check_overrides(root, commit, experiments, slots and slots[0])
    warn_oversubscribed(slots, threads)
    clashes = sorted(existing_names(root) & {experiment.name for experiment in experiments})
    if clashes and not args.force:
        raise SweepError(f"experiments of HEAD already named {', '.join(clashes)}: pass --force to replace them, "
                         "or --name-prefix")
    sweep_dir = root / ".dvc" / "tmp" / "sweep" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    sweep_dir.mkdir(parents=True)
    try:
        return run_sweep(args, experiments, root, commit, slots, threads, sweep_dir)
    except (KeyboardInterrupt, SweepError):
        # the experiments are stopped (run_pool, run_on_ray); the clones go, and the folder if nothing was logged
        shutil.rmtree(sweep_dir / WORKERS, ignore_errors=True)
        with contextlib.suppress(OSError):
            sweep_dir.rmdir()
        raise


def run_sweep(args: argparse.Namespace, experiments: list[grid.Experiment], root: Path, commit: str,
              slots: list[Slot] | None, threads: dict[str, int], sweep_dir: Path) -> int:
    progress = Progress(len(experiments), tail=args.tail)
    start = time.monotonic()
    if args.ray:
        from tools.sweep.on_ray import import_ray, run_on_ray
        import_ray()
        url = git_remote_url(root, args.git_remote)
        check_commit_on_remote(root, url, commit)
        check_dvc_remote(root, commit, args.dvc_remote)
        warn_unpushed(root, args.dvc_remote)
        progress.say(f"sweep: {len(experiments)} experiments of {commit[:7]} on the Ray cluster at {args.ray}; "
                     f"Git remote {url}; logs in {shown(sweep_dir)}")
        outcomes = run_on_ray(args.ray, experiments, url, commit, args.dvc_remote, args.force, threads,
                              args.cpus_per_exp, args.gpus_per_exp, args.ray_workdir, sweep_dir, progress)
        pulled = pull(root, url, [outcome.name for outcome in outcomes if outcome.ok], args, sweep_dir, progress)
    else:
        workdir = sweep_dir / WORKERS
        workdir.mkdir()
        cache_dir = run_dvc(root, "cache", "dir").stdout.strip()
        if not cache_dir:
            raise SweepError("dvc cache dir printed nothing")
        where = ", ".join(slot.label for slot in slots)
        progress.say(f"sweep: {len(experiments)} experiments of {commit[:7]} on {len(slots)} workers ({where}); "
                     f"logs in {shown(sweep_dir)}")
        job = clone_job(root, commit, cache_dir, workdir, slots, args.force)
        outcomes = run_pool(experiments, slots, job, sweep_dir, progress)
        if not args.keep_workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        pulled = True
    failed = [outcome.name for outcome in outcomes if not outcome.ok]
    progress.say(f"sweep: {len(outcomes) - len(failed)} of {len(outcomes)} experiments succeeded in "
                 f"{time.monotonic() - start:.1f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
                 + ("" if pulled else "; `dvc exp pull` failed, see above"))
    if len(failed) < len(outcomes) and pulled:
        progress.say("sweep: compare them with `dvc exp show` (docs/experiments.md: Working with experiments)")
    return 0 if not failed and pulled else 1


def pull(root: Path, url: str, names: list[str], args: argparse.Namespace, sweep_dir: Path,
         progress: Progress) -> bool:
    """Bring the experiments the workers pushed into this repository (git refs, and outputs into its cache)."""
    if not names:
        return True
    log = sweep_dir / "pull.log"
    options = (["--force"] if args.force else []) + (["--remote", args.dvc_remote] if args.dvc_remote else [])
    try:
        steps.run_logged(steps.dvc("exp", "pull", *options, url, *names), root, log, steps.command_env())
    except steps.StepFailed as error:
        progress.say(f"sweep: {error}; log: {shown(log)}\n" + "".join(
            f"    | {line}\n" for line in steps.read_text(log).splitlines()[-args.tail:]).rstrip("\n"))
        return False
    return True
