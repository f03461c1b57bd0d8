"""Sweeps: a grid of `dvc exp run -S ...` experiments run in parallel (see cli.py and docs/experiments.md
"Sweeps on many GPUs and machines"). Importing this package imports neither torch nor Ray."""
