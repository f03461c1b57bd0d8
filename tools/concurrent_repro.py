"""`dvc repro` with independent stages running at the same time.

    python -m tools.concurrent_repro --jobs 4 [-S key=value ...]

DVC runs one stage at a time. On a GPU that leaves most of the card idle: a ResNet18 step at batch
256 is launch-bound, and every stage process spends seconds starting Python, torch and CUDA
(the tiny test pipeline: 23 s of stage work in 75 s of `dvc repro` on 2 cores). DVC's documented
way to run independent arms of a pipeline in parallel is one `dvc repro` per arm: each releases
the repository lock while its command runs. This is that, scheduled from DVC's own graph: every
stage that needs to run is handed to `dvc --wait-for-lock repro --single-item <stage>` as soon as
the stages it depends on have finished, at most `--jobs` at a time, longest chains first.

What it leaves is what `dvc repro` leaves: the same outputs, dvc.lock entries and run cache (each
stage's bytes depend on its seeds and inputs, never on what ran beside it; tested on the CPU, where
reruns are bit-identical). Record the result as an experiment afterwards with `dvc exp save`. `-S key=value` edits
params.yaml first, with DVC's own code for `dvc exp run -S` (same syntax, comments kept), and puts it back byte
for byte when a stage fails or the run is stopped. One runs at a time in a project (a second is refused).
Each stage's output goes to .cache/concurrent/<stage>.log (robust_cifar/cache.py); the terminal gets a line per stage.
Stage processes keep their usual CPU threads: capping them at cores / jobs would change the bits
of a CPU run (a reduction split over fewer threads rounds differently).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from robust_cifar.cache import project_cache_dir
from robust_cifar.code_deps import CHECK_STAGE
from robust_cifar.errors import UserError
from robust_cifar.outputs import NEARLY_FULL, free_bytes
from robust_cifar.signals import (FORWARDED, Stopped, dies_with_this_process, run_tool, signal_of, signals_held,
                                  stop_group, stop_on_signals)
from tools.restored import Outcome, check_editable, hold_workspace, restored_on_failure

POLL_SECONDS = 0.2
# Stages at a time on a GPU: the four methods of a seed train side by side. On 2 CPU cores two
# trainings side by side took 133 s each against 38 s alone (threads oversubscribed, and spinning as they waited,
# before the stages had them wait asleep: docs/speed.md), hence 1 there.
GPU_JOBS = 4
MAX_JOBS = 256   # more than the pipeline has stages, so never a limit that matters; a typo's 10**20 is refused
# What DVC prints for a stage it did not run (dvc/stage/__init__.py, dvc/stage/cache.py): how the line names it.
NOT_RUN = {"didn't change, skipping": "unchanged", "is cached - skipping run": "restored from the run cache"}


@dataclass(frozen=True)
class Plan:
    """The stages to run and, for each, the stages (of those) it must wait for."""
    upstream: dict[str, frozenset[str]]
    priority: dict[str, int]   # the number of stages downstream: longest chains first

    def ready(self, done: set[str], started: set[str]) -> list[str]:
        waiting = [stage for stage in self.upstream if stage not in started and self.upstream[stage] <= done]
        return sorted(waiting, key=lambda stage: (-self.priority[stage], stage))


def plan_from_graph(upstream_of: dict[str, set[str]], stale: set[str],
                    constant: frozenset[str] = frozenset({CHECK_STAGE})) -> Plan:
    """`upstream_of`: every stage's direct dependencies; `stale`: the stages DVC reports changed.
    Runs the stale ones and everything downstream of them (DVC itself skips those whose inputs
    come out unchanged), but what lies below a stale stage whose output never changes (`constant`:
    check_params, which every edit of params.yaml or the code reruns, had every stage handed to DVC)
    only where DVC reports it changed itself."""
    downstream_of: dict[str, set[str]] = {stage: set() for stage in upstream_of}
    for stage, upstream in upstream_of.items():
        for dependency in upstream:
            downstream_of[dependency].add(stage)

    def below(stage: str) -> set[str]:
        found, frontier = set(), [stage]
        while frontier:
            for child in downstream_of[frontier.pop()] - found:
                found.add(child)
                frontier.append(child)
        return found

    to_run = set(stale).union(*(below(stage) for stage in stale - constant))
    return Plan(upstream={stage: frozenset(upstream_of[stage] & to_run) for stage in to_run},
                priority={stage: len(below(stage)) for stage in to_run})


def read_pipeline(root: Path) -> tuple[dict[str, set[str]], set[str]]:
    """DVC's stage graph (each stage's direct dependencies) and the stages whose inputs changed."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    try:
        # from inside the project, as the CLI: elsewhere DVC names each stage by its dvc.yaml's path
        with contextlib.chdir(root), Repo(".") as repo:
            graph = repo.index.graph
            stages = [stage for stage in graph if isinstance(stage, PipelineStage)]
            upstream_of = {stage.addressing: {dependency.addressing for dependency in graph.successors(stage)
                                              if isinstance(dependency, PipelineStage)} for stage in stages}
            stale = set(repo.status())
    except DvcException as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        said = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]   # "... is busy, it is being blocked by:"
        raise UserError(f"dvc cannot read the pipeline: {said} (`dvc repro` shows the whole message)") from None
    return upstream_of, stale & set(upstream_of)


def set_params(overrides: list[str], path: Path = Path("params.yaml")) -> None:
    """`dvc exp run -S`'s edit of params.yaml, without the experiment; a value refused (by DVC's own -S
    code or by what check_params will check) before params.yaml is touched."""
    from dvc.utils.hydra import apply_overrides

    from robust_cifar.check_params import check_on_this_machine
    from robust_cifar.params import SET_WITH_S, load_params, with_overrides

    if not path.is_file():
        raise UserError(f"no {path} here: run from the project's root")
    check_on_this_machine(with_overrides(load_params(path), overrides, set_with=SET_WITH_S))   # the edit, on a copy
    with signals_held():   # DVC rewrites the file in place: Ctrl-C halfway through left it empty or cut short
        apply_overrides(path, overrides)


def stage_command(stage: str) -> list[str]:
    return [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]


def log_path(stage: str) -> Path:
    return project_cache_dir("concurrent") / f"{stage.replace('/', '_')}.log"


def failure_line(path: Path) -> str:
    """What went wrong, from a failed stage's log: the stage's own one-line error, else the last line
    of a traceback, else DVC's error."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    stage_errors = [line for line in lines if line.startswith(("error:", "interrupted:"))]
    if stage_errors:
        return stage_errors[-1]
    dvc_error = next((i for i, line in enumerate(lines) if line.startswith("ERROR:")), len(lines))
    if any(line.startswith("Traceback") for line in lines[:dvc_error]):
        return lines[dvc_error - 1]
    if lines:
        return lines[min(dvc_error, len(lines) - 1)]
    if free_bytes(path.parent) < NEARLY_FULL:   # the stage could not write its log, its own line included
        return f"(no output: the disk holding {path.parent} is full; free some space there, then rerun)"
    return "(no output)"


def not_run(path: Path) -> str | None:
    """Why DVC did not run a stage that finished (one downstream of a changed stage whose inputs came
    out the same, say), from its log; None if it ran."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    return next((words for marker, words in NOT_RUN.items() if marker in text), None)


def stage_environment() -> dict[str, str]:
    """dvc.yaml's commands say `python`: make it the interpreter running this (a venv's, say), as
    `dvc repro` from an activated environment would find it."""
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def run(plan: Plan, jobs: int, echo=print, command=stage_command) -> int:
    """Run the plan (each stage as `command(stage)`); returns 0, the exit code of the first stage
    that failed, or 130 on Ctrl-C. After a failure nothing new starts, and the stages already
    running finish (their work is kept)."""
    project_cache_dir("concurrent").mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    done: set[str] = set()
    started: set[str] = set()
    failure = 0
    total = len(plan.upstream)
    environment = stage_environment()
    try:
        while len(done) < total and (running or not failure):
            if not failure:
                for stage in plan.ready(done, started)[: jobs - len(running)]:
                    with log_path(stage).open("w") as log:
                        # its own process group: Ctrl-C here reaches each stage exactly once, from `interrupt`
                        process = subprocess.Popen(command(stage), stdout=log, stderr=subprocess.STDOUT,
                                                   env=environment, process_group=0,
                                                   preexec_fn=dies_with_this_process())   # a SIGKILL here too
                    running[stage] = (process, time.perf_counter())
                    started.add(stage)
            time.sleep(POLL_SECONDS)
            for stage, (process, since) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[stage]
                seconds = time.perf_counter() - since
                if process.returncode == 0:
                    done.add(stage)
                    why = not_run(log_path(stage))
                    echo(f"[{len(done)}/{total}] {stage}: {seconds:.0f} s" + (f" ({why})" if why else ""))
                else:
                    # a dvc killed by a signal returns -N: exit as a shell reports it, 128 + N (SIGKILL had read 247)
                    code = process.returncode if process.returncode > 0 else 128 - process.returncode
                    failure = failure or code
                    echo(f"failed: {stage} (exit {code}): {failure_line(log_path(stage))} "
                         f"(the whole output: {log_path(stage)})")
            if not running and not failure and len(done) < total and not plan.ready(done, started):
                raise RuntimeError("no stage can start: the plan has a cycle")   # DVC refuses cycles first
    except KeyboardInterrupt as stopped:
        signum = signal_of(stopped)
        interrupt(running, signum)
        return Stopped(signum).exit_code
    return failure


def interrupt(running: dict[str, tuple[subprocess.Popen, float]], signum: int = signal.SIGINT) -> None:
    """Stop every running stage's process group (DVC and the stage under it; FORWARDED, whatever `signum` stopped
    the tool), then wait for them."""
    for process, _ in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, FORWARDED)
    for process, _ in running.values():
        stop_group(process, signum, sent=True)
    print(f"interrupted ({Stopped(signum).name}): finished stages are kept; rerun the same command to continue",
          file=sys.stderr)


def default_jobs() -> int:
    import torch

    return GPU_JOBS if torch.cuda.is_available() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help=f"stages at a time (default {GPU_JOBS} where torch sees a CUDA GPU, else 1: on a CPU "
                             "stages beside each other fight over the cores)")
    parser.add_argument("--set-param", "-S", action="append", default=[], metavar="KEY=VALUE",
                        help="change params.yaml first, as `dvc exp run -S` does (repeatable)")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = default_jobs()
    if not 1 <= args.jobs <= MAX_JOBS:
        parser.error(f"--jobs {args.jobs}: must be from 1 to {MAX_JOBS}")
    stop_on_signals()   # TERM and HUP (a closed terminal, a scheduler) stop the stages as Ctrl-C does
    try:   # a second one's -S edit would reach this one's stages, which then record its values
        running = hold_workspace()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    params = Path("params.yaml")
    # -S edits params.yaml: a run that fails (a value only a stage can refuse) or is stopped puts it back
    with (restored_on_failure(params, lock=Path("dvc.lock")) if args.set_param and params.is_file()
          else contextlib.nullcontext(Outcome())) as outcome:
        outcome.returncode = run_all(args)
    running.close()
    return outcome.returncode


def run_all(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        if args.set_param:
            check_editable(Path("params.yaml"))
            set_params(args.set_param)
        upstream_of, stale = read_pipeline(Path("."))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stopped:
        print("interrupted before any stage started", file=sys.stderr)
        return Stopped(signal_of(stopped)).exit_code
    plan = plan_from_graph(upstream_of, stale)
    if not plan.upstream:
        print("every stage is up to date")
        return 0
    print(f"{len(plan.upstream)} of {len(upstream_of)} stages to run, {args.jobs} at a time "
          f"(each one's output: {project_cache_dir('concurrent')}/<stage>.log)", flush=True)
    returncode = run(plan, args.jobs, echo=lambda line: print(line, flush=True))
    if returncode == 0:
        print(f"done in {time.perf_counter() - started:.0f} s")
    return returncode


if __name__ == "__main__":
    run_tool(main)
