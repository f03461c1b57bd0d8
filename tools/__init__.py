"""Experiment tooling, outside the library: presets, sweeps, concurrent repro, benchmarks, ablations, the
independent attack check, and the rewriter that keeps dvc.yaml's code deps equal to each stage's imports."""
