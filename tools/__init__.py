"""Experiment tooling, outside the library: presets, sweeps, concurrent repro, benchmarks, ablations, the
independent attack check, and the rewriter that keeps dvc.yaml's code deps equal to each stage's imports."""
import sys

if sys.argv[:1] == ["-m"]:   # Python sets this while it finds `-m tools.<name>`; not when a test imports a tool
    from robust_cifar.signals import leave_at_once_on_signals
    leave_at_once_on_signals("while the tool was starting: it had done nothing yet")   # until its run_tool
    from robust_cifar.machine import threads_wait_asleep
    threads_wait_asleep()   # before the tool imports torch
