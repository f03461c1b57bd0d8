"""Benchmark: a sweep on two CPU workers against the same experiments run one after another.

    python -m tools.bench_sweep        # about 4 minutes on 2 cores

Builds the tiny project of the test suite (tests/pipeline_project.py), baseline only, reproduces
it, then runs four knn.k experiments (eval and summarize each) with `dvc exp run` one by one and
with `python -m tools.sweep --workers 2`, and prints both wall times, the cores each kept
busy, the ratio and the CPU. Run it with nothing else on the machine: a second worker is only
faster with a second free core.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from robust_cifar.signals import run_tool
from robust_cifar.training.methods.registry import REFERENCE_METHOD
from tests.pipeline_project import create_tiny_project, dvc, run
from tools.sweep import grid

GRID = ["-S", "knn.k=1,5,7,9"]


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(action) -> tuple[float, float]:
    """(wall seconds, cores kept busy by child processes) of `action()`."""
    cpu, start = children_cpu_seconds(), time.monotonic()
    action()
    wall = time.monotonic() - start
    return wall, (children_cpu_seconds() - cpu) / wall


def cpu_model() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")),
                platform.processor() or "unknown CPU")


def baseline_project(folder: Path) -> Path:
    project = create_tiny_project(folder / "base")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["methods"] = [REFERENCE_METHOD]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(project, "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "baseline only, reproduced")
    return project


def main(argv: list[str] | None = None) -> None:
    # no options; --help says what it runs, before minutes of work
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        print("reproducing the tiny baseline project ...", flush=True)
        base = baseline_project(folder)
        serial_project = Path(shutil.copytree(base, folder / "serial", symlinks=True))
        sweep_project = Path(shutil.copytree(base, folder / "sweep", symlinks=True))

        def serial() -> None:
            for experiment in grid.experiments(GRID[1::2]):
                dvc(serial_project, "exp", "run", "-n", experiment.name, *experiment.set_params())

        def sweep() -> None:
            run(sweep_project, sys.executable, "-m", "tools.sweep", *GRID, "--workers", "2", "--gpus", "none")

        serial_wall, serial_cores = timed(serial)
        sweep_wall, sweep_cores = timed(sweep)
        print(f"4 tiny experiments on {os.cpu_count()} x {cpu_model()}:\n"
              f"  one after another (dvc exp run)  {serial_wall:6.1f} s, {serial_cores:.2f} cores busy\n"
              f"  sweep on 2 CPU workers           {sweep_wall:6.1f} s, {sweep_cores:.2f} cores busy\n"
              f"  speed-up                         {serial_wall / sweep_wall:6.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    run_tool(main)
