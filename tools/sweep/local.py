"""One machine: one worker per visible GPU (or N CPU workers), each in its own clone sharing the DVC cache.

A worker clones the repository at HEAD once (into .dvc/tmp/sweep/<id>/workers/worker-<k>,
git-ignored), points the clone at the main repository's DVC cache, and then, for each experiment
it takes from the shared list: resets params.yaml and dvc.lock to the commit, runs
`dvc exp run -n <name> -S ...` with its own CUDA_VISIBLE_DEVICES (stages the experiment does not
change are checked out of the shared cache, not rerun; so are stages another worker already ran
with the same inputs, through DVC's run cache), and `dvc exp push --no-cache <main repo> <name>`
(the outputs are already in the shared cache). The experiments are then ordinary experiments of
the main repository.
"""
from __future__ import annotations

import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from robust_cifar.signals import FORWARDED, ignore_stop_signals
from tools.sweep import steps
from tools.sweep.grid import Experiment

STOP_WAIT_SECONDS = 60   # for each worker's running experiment to stop, after the signal


@dataclass(frozen=True)
class Slot:
    label: str                     # "gpu 0" / "cpu 1": where the progress line says it ran
    env: dict[str, str]            # CUDA_VISIBLE_DEVICES and thread counts for its commands
    numerics: tuple[str, ...] = ()  # the device and CPU threads its experiments run with, as `key=value`

    def set_params(self, experiment: Experiment | None = None) -> list[str]:
        """`-S` arguments of the slot's device and thread count, and then `experiment`'s own (steps.with_numerics)."""
        return steps.with_numerics(self.numerics, experiment.set_params() if experiment else [])


def visible_gpus(environ: dict[str, str] | None = None, device_count: Callable[[], int] | None = None) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when it is set (ids or UUIDs, up to the
    first invalid entry such as -1, as CUDA reads it), else torch's device count."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = []
        for entry in (part.strip() for part in listed.split(",")):
            if not entry or entry.startswith("-"):
                break
            gpus.append(entry)
        return gpus
    if device_count is None:
        def device_count() -> int:
            try:
                import torch
                return torch.cuda.device_count()
            except Exception:  # noqa: BLE001 - no usable CUDA is no GPU
                return 0
    return [str(index) for index in range(device_count())]


def plan_slots(gpus: list[str], workers: int | None, threads: int) -> list[Slot]:
    """Workers pinned round-robin to `gpus` (default: one per GPU); CPU workers when `gpus` is empty.

    Each worker runs `threads` CPU threads, params.yaml's `compute.threads` (OMP_NUM_THREADS too, so no
    library starts one per core): another count would change every model's bits, so each experiment
    would retrain what it does not change and differ from `dvc repro`'s run for a reason the sweep does
    not name. The count and the device are `-S` of every experiment it runs, where DVC records them.
    """
    count = workers or max(1, len(gpus))
    if count < 1:
        raise ValueError("--workers must be at least 1")
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpus:
        return [Slot(f"gpu {gpus[k % len(gpus)]}", {"CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)], **env},
                     ("compute.device=cuda", f"compute.threads={threads}")) for k in range(count)]
    return [Slot(f"cpu {k}", {"CUDA_VISIBLE_DEVICES": "", **env},
                 ("compute.device=cpu", f"compute.threads={threads}")) for k in range(count)]


def oversubscription(slots: list[Slot], threads: int, cores: int) -> str | None:
    """A warning when the workers' threads together exceed the cores: slower, the same results. Where one
    experiment's threads alone exceed them, check_params' own warning says so, and fewer workers would not help."""
    if len(slots) * threads <= cores or threads > cores:
        return None
    return (f"sweep: warning: {len(slots)} workers x compute.threads {threads} = {len(slots) * threads} threads on "
            f"{cores} CPU cores: each experiment runs slower than alone (its results are the same); use fewer "
            "--workers (a `-S compute.threads=...` changes every model's bits, so it retrains them all)")


def shown(path: Path | str) -> str:
    """A path as the user typed it: relative to the current directory when it is under it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Progress:
    """One line per finished experiment; a failure adds the last lines of its log."""

    def __init__(self, total: int, out: TextIO | None = None, tail: int = 25):
        self.total, self.done, self.tail = total, 0, tail
        self.out = out or sys.stdout
        self.lock = threading.Lock()

    def say(self, line: str) -> None:
        with self.lock:
            print(line, file=self.out, flush=True)

    def finished(self, outcome: steps.Outcome) -> None:
        with self.lock:
            self.done += 1
            width = len(str(self.total))
            status = "ok    " if outcome.ok else "FAILED"
            line = f"[{self.done:>{width}}/{self.total}] {status} {outcome.name}  {outcome.seconds:.1f} s  {outcome.where}"
            if not outcome.ok:
                line += f"\n    {outcome.failed_step}\n    log: {shown(outcome.log)}"
                text = outcome.log_text or steps.read_text(Path(outcome.log))
                lines = text.rstrip("\n").splitlines()[-self.tail:]
                line += "".join(f"\n    | {entry}" for entry in lines)
            print(line, file=self.out, flush=True)


# job(experiment, slot_index, log) runs one experiment; it raises (StepFailed or anything) when it fails
Job = Callable[[Experiment, int, Path], None]


def run_pool(experiments: list[Experiment], slots: list[Slot], job: Job, logs: Path,
             progress: Progress) -> list[steps.Outcome]:
    """Every experiment once, on whichever slot is free; a failure is recorded and the others go on."""
    todo: queue.Queue[Experiment] = queue.Queue()
    for experiment in experiments:
        todo.put(experiment)
    outcomes: dict[str, steps.Outcome] = {}

    stopping = threading.Event()

    def worker(index: int) -> None:
        while not stopping.is_set():
            try:
                experiment = todo.get_nowait()
            except queue.Empty:
                return
            log = logs / f"{experiment.name}.log"
            start = time.monotonic()
            failed = ""
            try:
                with open(log, "a") as out:
                    pinned = ", ".join(f"{key}={value!r}" for key, value in slots[index].env.items())
                    out.write(f"# {experiment.name}: {experiment.describe()} on {slots[index].label} ({pinned})\n")
                job(experiment, index, log)
            except steps.StepFailed as error:
                failed = str(error)
            except Exception as error:  # noqa: BLE001 - one experiment's failure must not stop the others
                failed = f"{type(error).__name__}: {error}"
                with open(log, "a") as out:
                    out.write(f"{failed}\n")
            if stopping.is_set():   # stopped, not failed: its log stays, and the sweep's one line says why
                return
            outcome = steps.Outcome(experiment.name, not failed, time.monotonic() - start, slots[index].label,
                                    str(log), failed)
            outcomes[experiment.name] = outcome
            progress.finished(outcome)

    threads = [threading.Thread(target=worker, args=(index,), daemon=True, name=f"sweep-{slots[index].label}")
               for index in range(min(len(slots), len(experiments)))]
    try:
        # started inside the try: a signal while the threads start (its handler runs in this thread) must
        # stop the experiments the first ones already began, not leave them running
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():       # a join with a timeout lets Ctrl-C reach the main thread
                thread.join(0.5)
    except KeyboardInterrupt:
        # INT, TERM or HUP: no new experiment starts; each running command (`dvc exp run` and its stage, in a
        # process group of its own) gets FORWARDED and stops; their workers then end without a report
        stopping.set()
        ignore_stop_signals()   # a second signal changes nothing while they stop
        steps.COMMANDS.stop(FORWARDED)
        for thread in threads:
            if thread.ident is not None:   # started
                thread.join(STOP_WAIT_SECONDS)
        raise
    return [outcomes[experiment.name] for experiment in experiments]


def clone_job(root: Path, commit: str, cache_dir: str, workdir: Path, slots: list[Slot], force: bool) -> Job:
    """The local job: a clone per slot (made on its first experiment), reset, exp run, exp push to `root`."""
    pushing = threading.Lock()    # one `git push` into the main repository at a time
    ready: set[int] = set()

    def job(experiment: Experiment, index: int, log: Path) -> None:
        env = steps.command_env(slots[index].env)
        workspace = workdir / f"worker-{index}"
        if index in ready:
            try:
                steps.reset(workspace, log, env)
            except steps.StepFailed:
                ready.discard(index)   # a clone that cannot be reset is replaced
        if index not in ready:   # the slot's first experiment, or the one after a failed setup: a fresh clone
            shutil.rmtree(workspace, ignore_errors=True)
            steps.clone(str(root), commit, workspace, log, env)
            steps.use_cache(workspace, cache_dir, log, env)   # `dvc exp run` checks the outputs out of it
            ready.add(index)
        steps.run_experiment(workspace, experiment.name, slots[index].set_params(experiment), log, env)
        with pushing:
            steps.push_experiment(workspace, str(root), experiment.name, log, env, force=force, cache=False)

    return job
