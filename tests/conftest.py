"""Shared fixtures: one reproduced tiny pipeline for every end-to-end test of the session, built once beside the
unit tests and shared by the pytest-xdist workers (each works on a copy of its own)."""
import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable

from robust_cifar.machine import threads_wait_asleep

# The suite runs more threads than cores by design (the tiny pipeline's build beside the workers, each test's DVC
# stages beside the other worker's): torch's OpenMP threads must wait asleep here too (a two-thread test took 53 s
# beside the build where it takes 4 alone), set before torch loads.
threads_wait_asleep()

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.pipeline_project import start_build, wait_for_build

END_TO_END_FIXTURE = "reproduced_project"
# `-n auto`: the slow tests are few and run one DVC stage at a time each; more workers gain nothing
MAX_WORKERS = 4
BUILD = "tiny-pipeline"   # the project's folder in the run's shared temporary folder
# The workers' niceness while the build runs: it takes a core of its own, which is what every slow test waits for,
# while the unit tests share the other
WORKER_NICENESS = 10
CPUS = os.cpu_count() or 1


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n auto` (pytest-xdist's `--dist load`) steals work: a worker that is done takes tests another has queued
    (those it would run next), so the slow tests, which run last, end on both workers at about the same time.
    Other `--dist` modes as asked."""
    if config.getvalue("dist") == "load":
        from xdist.scheduler import WorkStealingScheduling
        from xdist.scheduler.worksteal import MIN_PENDING

        class StealingTheNextTests(WorkStealingScheduling):
            """pytest-xdist 3.8's work stealing, except that an idle worker takes the half of another's queue that
            it would run next, not the half it would run last. The slow tests run longest first, so a long one starts
            wherever a worker is free and each queue ends with short ones: with the last half stolen, the long ones
            stayed at the front of their worker's queue, and two (the sweeps) ran last there with the other worker
            idle for 166 s of an 11-minute suite (xdist never takes a worker's running and next test)."""

            def check_schedule(self) -> None:
                # xdist steals the end of a worker's pending list (after its running and next test): for that
                # decision, the list's stealable part in reverse order, then reversed back (xdist only appends)
                ends = {node: len(pending) for node, pending in self.node2pending.items()}
                for pending in self.node2pending.values():
                    pending[MIN_PENDING:] = reversed(pending[MIN_PENDING:])
                try:
                    super().check_schedule()
                finally:
                    for node, pending in self.node2pending.items():
                        end = ends.get(node, 0)
                        pending[MIN_PENDING:end] = reversed(pending[MIN_PENDING:end])

        return StealingTheNextTests(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`pytest -n auto`: a worker per CPU (CPUS: os.cpu_count(), not pytest-xdist's physical cores: the tiny
    pipeline's stages and DVC run on one thread each), at most MAX_WORKERS. PYTEST_XDIST_AUTO_NUM_WORKERS,
    if set, decides instead (None leaves it to pytest-xdist)."""
    if not os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return min(MAX_WORKERS, CPUS)


def pytest_configure(config):
    """Under pytest-xdist (`-n auto`), each worker's torch takes its share of the cores, so the workers'
    in-process tests do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, CPUS // workers))


def pytest_collection_modifyitems(items):
    """Every test that needs the reproduced tiny pipeline is slow: `pytest -m "not slow"` is the quick loop. The
    slow tests run last, so every worker runs unit tests while the pipeline is being built, and the longest of them
    first (their `long` markers): pytest-xdist never moves a worker's running and next test to another, so two long
    tests at the end of one worker's queue ran with the other worker idle (the two sweeps: 166 s of one core, of
    an 11-minute suite)."""
    slow = [item for item in items if END_TO_END_FIXTURE in getattr(item, "fixturenames", ())]
    for item in slow:
        item.add_marker(pytest.mark.slow)
    chosen = set(slow)
    slow.sort(key=long_seconds, reverse=True)   # stable: the others in their order
    items[:] = [item for item in items if item not in chosen] + slow


def long_seconds(item) -> float:
    """How long a test marked `long` keeps its worker busy (its marker says); 0 for the others."""
    long = item.get_closest_marker("long")
    return long.kwargs["seconds"] if long else 0


def shared_folder(tmp_path_factory) -> Path:
    """The temporary folder of this run that every pytest-xdist worker sees (each has its own inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def built_once(tmp_path_factory) -> Callable[[str, Callable[[Path], None]], Path]:
    """built_once(name, build): the folder `build(folder)` fills, made once per run for every pytest-xdist worker
    (the first to ask builds it, under a lock the others wait on). Tests copy it and never change it."""
    shared = shared_folder(tmp_path_factory)

    def built(name: str, build: Callable[[Path], None]) -> Path:
        done = shared / name
        with open(shared / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)   # released when the lock file closes, by this worker or its end
            if not done.exists():
                part = shared / f"{name}.part"
                shutil.rmtree(part, ignore_errors=True)   # left by a worker whose build failed
                build(part)
                part.rename(done)
        return done
    return built


@pytest.fixture(scope="session", autouse=True)
def tiny_pipeline(request, tmp_path_factory):
    """Where the tiny pipeline is reproduced, once per run, from the session's first test on, when any selected test
    needs it; the unit tests yield the CPU to it (WORKER_NICENESS). The worker that builds it waits for the build at
    its end: another may still need it."""
    destination = shared_folder(tmp_path_factory) / BUILD
    needed = any(END_TO_END_FIXTURE in getattr(item, "fixturenames", ()) for item in request.session.items)
    builder = start_build(destination) if needed else None
    if needed:
        os.nice(WORKER_NICENESS)
    yield destination
    if builder:
        builder.wait()


@pytest.fixture(scope="session")
def reproduced_project(tiny_pipeline, tmp_path_factory):
    """A committed copy of the project whose tiny pipeline has been reproduced once: this worker's own copy.

    Tests that change it must restore it (or work on a copy): the worker's tests share it.
    """
    built = wait_for_build(tiny_pipeline)
    return Path(shutil.copytree(built, tmp_path_factory.mktemp("pipeline") / "project", symlinks=True))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions: one thread is fastest, and immune to other processes on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
