"""Named sets of overrides that run the whole study smaller: one command, one DVC experiment.

    python -m robust_cifar.preset quick --archive ../shared/data/cifar10-jpeg.tar.gz

runs `dvc exp run -n quick-<date> -S preset=quick -S model.width=8 ...`: every method, every stage,
two seeds, on the real images, in about 20 minutes on 2 CPU cores. The experiment is an ordinary
one (`dvc exp show` lists it with its `preset` column; `dvc exp apply` / `branch` work), and its
outputs land in the workspace. `--dry-run` prints the command instead.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from robust_cifar.provenance import devices, git_commit, run_lines, stage_times
from robust_cifar.stage import TIMINGS

TRAINING = Path("reports/training")   # the dvclive folders, each with the device its run trained on

# Each override names the lever it pulls; every key has a validation rule where its owner reads it.
PRESETS: dict[str, dict[str, object]] = {
    "quick": {
        "preset": "quick",
        "model.width": 8,                 # 1/64 of the standard ResNet18's FLOPs
        "model.dropout": 0.0,             # learns faster in few epochs, and costs CPU time
        "train.epochs": 12,
        "train.val_every": 4,
        "train.perturbed_val_every": 4,
        "split.train_fraction": 0.1,      # 500 training images per class
        "split.val_per_class": 50,
        "split.test_per_class": 100,
        "seeds.train": [0, 1],            # two seeds, so the spread shows
        "attack.eps_255": [0, 2, 6.375, 32],   # the study's eps, one below and one where nothing survives
        "attack.test_images": 200,
        # FGM and PGD over the sweep; the 100-iteration attacks at the study's eps only, the soft k-NN
        # surrogates at one temperature; targeted APGD (9 runs) left to the full study
        **{f"attack.{name}.at": "study" for name in ("apgd_ce", "apgd_dlr", "soft_knn_pgd", "soft_knn_apgd_ce",
                                                      "soft_knn_apgd_dlr", "guide_samples", "transfer")},
        **{f"attack.{name}.temperatures": [0.03] for name in ("soft_knn_pgd", "soft_knn_apgd_ce", "soft_knn_apgd_dlr")},
        "attack.apgd_t.at": "never",
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


# What a published run holds: small files that say what the run found (models and embeddings stay in DVC).
PUBLISHED = ("reports/summary.md", "reports/summary.json", "reports/accuracy.png", "reports/robustness_curve.png",
             "reports/training_curves.png", "reports/examples.png", "reports/metrics/*.json", "reports/umap/*.png")


def publish(destination: Path, command_line: str, wall_seconds: float | None = None) -> list[Path]:
    """Copy the workspace's results into `destination` (for git), with a README saying how they were made.

    `wall_seconds`: how long the command took from start to end, dvc's own work included (on a fresh
    clone, the whole study)."""
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for pattern in PUBLISHED:
        for source in sorted(Path(".").glob(pattern)):
            target = destination / source.relative_to("reports")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(target)
    summary = json.loads(Path("reports/summary.json").read_text())
    (destination / "README.md").write_text("\n".join([
        f"# {destination.name}: a published run", "",
        "Reproduce it from a clone of this repository (the numbers are bit-identical on the same kind of CPU):", "",
        "```bash", command_line, "```", "",
        "## What produced it", "", *summary["provenance"],
        *run_lines(devices(TRAINING), git_commit(), stage_times(TIMINGS)),
        *([f"- **wall time of the command**: {wall_seconds / 60:.1f} min from start to end (stages that DVC "
           "reused from its cache took none)."] if wall_seconds is not None else []), "",
        "## Verdict", "", *[f"- {sentence}" for sentence in summary["verdict"]], "",
        "`summary.md` holds every table; `metrics/` the across-seed means and stds (`dvc metrics show` keys);",
        "the PNGs are the figures of `dvc plots show`.", ""]))
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--archive", help="a local CIFAR-10 archive (data.archive); default: download the official one")
    parser.add_argument("--archive-md5", help="its md5 (data.archive_md5); default: not checked")
    parser.add_argument("--name", help="the experiment's name (default: <preset>-<date>-<time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command instead of running it")
    parser.add_argument("--publish", type=Path, metavar="DIR",
                        help="after a successful run, copy its summary, metrics and figures into DIR (e.g. results/quick-cpu)")
    args = parser.parse_args(argv)
    cmd = command(args.preset, args.archive, args.archive_md5, args.name)
    print(" ".join(shlex.quote(part) for part in cmd), flush=True)
    if args.dry_run:
        return 0
    started = time.perf_counter()
    try:
        returncode = subprocess.run(cmd).returncode
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue; finished stages are reused", file=sys.stderr)
        return 130
    if returncode == 0 and args.publish:
        published = publish(args.publish, "python -m robust_cifar.preset " + " ".join(
            shlex.quote(part) for part in (argv if argv is not None else sys.argv[1:])),
            wall_seconds=time.perf_counter() - started)
        print(f"published {len(published)} files to {args.publish}")
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
