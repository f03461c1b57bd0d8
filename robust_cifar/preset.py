"""Named sets of overrides that run the whole study smaller: one command, one DVC experiment.

    python -m robust_cifar.preset quick --archive ../shared/data/cifar10-jpeg.tar.gz

runs `dvc exp run -n quick-<date> -S preset=quick -S model.width=8 ...`: every method, every stage,
two seeds, on the real images, in about 20 minutes on 2 CPU cores. The experiment is an ordinary
one (`dvc exp show` lists it with its `preset` column; `dvc exp apply` / `branch` work), and its
outputs land in the workspace. `--dry-run` prints the command instead.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

# Each override names the lever it pulls; every key has a validation rule where its owner reads it.
PRESETS: dict[str, dict[str, object]] = {
    "quick": {
        "preset": "quick",
        "model.width": 8,                 # 1/64 of the standard ResNet18's FLOPs
        "model.dropout": 0.0,             # learns faster in few epochs, and costs CPU time
        "train.epochs": 12,
        "train.val_every": 4,
        "split.train_fraction": 0.1,      # 500 training images per class
        "split.val_per_class": 50,
        "split.test_per_class": 100,
        "seeds.train": [0, 1],            # two seeds, so the spread shows
        "attack.eps": [0, 2, 8, 32],
        "attack.pgd_steps": 3,
        "attack.knn_temperatures": [0.05],
        "attack.test_images": 200,
        "umap.fit_samples": 1000,
        "umap.plot_samples": 300,
    },
}


def overrides(name: str) -> list[str]:
    """`-S key=value` arguments, values in YAML (lists as [a, b])."""
    def text(value) -> str:
        return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
    return [argument for key, value in PRESETS[name].items() for argument in ("-S", f"{key}={text(value)}")]


def command(name: str, archive: str | None, archive_md5: str | None, experiment: str | None) -> list[str]:
    data = []
    if archive:
        data += ["-S", f"data.archive={archive}", "-S", f"data.archive_md5={archive_md5 or ''}"]
    experiment = experiment or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return [sys.executable, "-m", "dvc", "exp", "run", "-n", experiment, *overrides(name), *data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--archive", help="a local CIFAR-10 archive (data.archive); default: download the official one")
    parser.add_argument("--archive-md5", help="its md5 (data.archive_md5); default: not checked")
    parser.add_argument("--name", help="the experiment's name (default: <preset>-<date>-<time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command instead of running it")
    args = parser.parse_args(argv)
    cmd = command(args.preset, args.archive, args.archive_md5, args.name)
    print(" ".join(shlex.quote(part) for part in cmd), flush=True)
    if args.dry_run:
        return 0
    try:
        return subprocess.run(cmd).returncode
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue; finished stages are reused", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
