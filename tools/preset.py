"""Named sets of overrides that run the whole study smaller: one command, one DVC experiment.

    python -m tools.preset quick --archive ../shared/data/cifar10-jpeg.tar.gz

runs `dvc exp run -n quick-<date> -S preset=quick -S model.width=8 ...`: every method, every stage,
three seeds, on the real images, in under 30 minutes on a 2-core CPU with bf16 units (`cpu`: the write-up's
data scale, a wider model, longer; docs/speed.md "The study on a CPU"). The experiment is an ordinary
one (`dvc exp show` lists it with its `preset` column; `dvc exp apply` / `branch` work), and its
outputs land in the workspace. Before DVC sees anything, every override is checked as the
check_params stage would check it, on this machine, and so is the `--publish` folder; a failed run
leaves params.yaml exactly as it was. `--dry-run` runs those checks and prints the command.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from robust_cifar.check_params import check_on_this_machine
from robust_cifar.data.download import md5_of
from robust_cifar.errors import DiskFullError, ParamsError, PublishError, UserError
from robust_cifar.outputs import CONTROL_FOLDERS, NO_SPACE, OUTPUT_FOLDERS
from robust_cifar.params import load_params, with_overrides
from robust_cifar.reporting.provenance import (devices, git_commit, run_lines, stage_times, time_lines,
                                                times_of_runs)
from robust_cifar.signals import Stopped, run_in_group, run_tool, signal_of, signals_held, stop_on_signals
from robust_cifar.stage import timings
from robust_cifar.training.methods.registry import on_a_cpu
from stages import paths
from stages.curves import TRAINING_CURVES
from tools.restored import check_editable, hold_workspace, restored_on_failure
from tools.sweep.cli import existing_names
from tools.sweep.grid import LONGEST_EXP_NAME, quoted, valid_exp_name


# Each override names the lever it pulls; every key has a validation rule where its owner reads it.
ON_A_CPU: dict[str, object] = {
    "compute.device": "cpu",
    "compute.threads": 2,             # part of the result (bits differ at another count); 2 = the published runs
    "model.dropout": 0.0,             # learns faster in few epochs, and costs CPU time
    "attack.eps_255": [0, 2, 6.375, 32],   # the study's eps, one below and one where nothing survives
    "attack.cascade": True,           # AutoAttack's protocol: each attack on what the earlier ones left
    **on_a_cpu(),                     # each method's own cheaper settings (ON_A_CPU in its file)
    # FGM, PGD, APGD-CE and APGD-DLR over the sweep (at 32/255 FGM and PGD alone left 2.4% of the images
    # right on PGD-trained heads, where the break gate allows 2%); targeted APGD and the attacks on the
    # 3-NN at the study's eps only, the soft k-NN surrogates at one temperature
    **{f"attack.{name}.at": "study" for name in ("apgd_t", "soft_knn_pgd", "soft_knn_apgd_ce", "soft_knn_apgd_dlr",
                                                  "guide_samples", "transfer")},
    **{f"attack.{name}.temperatures": [0.03] for name in ("soft_knn_pgd", "soft_knn_apgd_ce", "soft_knn_apgd_dlr")},
}

PRESETS: dict[str, dict[str, object]] = {
    "quick": {                        # every method and stage in under 30 minutes: small models, three seeds
        "preset": "quick",
        **ON_A_CPU,
        "model.width": 8,                 # 1/64 of the standard ResNet18's FLOPs
        "train.epochs": 10,
        "train.val_every": 5,
        "train.perturbed_val_every": 5,
        "split.train_fraction": 0.1,      # 500 training images per class
        "split.val_per_class": 50,
        "split.test_per_class": 100,
        "seeds.train": [0, 1, 2],         # three, as the cpu preset: five seeds of five methods take 40 minutes
        "attack.test_images": 500,
        "attack.apgd_t.at": "never",      # targeted APGD (9 runs) left to the cpu preset and the full study
        "umap.fit_samples": 1000,
        "umap.plot_samples": 300,
    },
    "cpu": {                          # the write-up's data in about an hour: 1,000 training images per class,
        "preset": "cpu",              # the whole test set, three seeds, a model four times the quick one
        **ON_A_CPU,
        "model.width": 16,                # 1/16 of the standard ResNet18's FLOPs (docs/speed.md: the width x epochs table)
        "train.epochs": 12,
        "train.lr_schedule_on": "validation",   # the plateau on the validation loss lowers the lr when the model
        "train.val_every": 5,             # starts to overfit (epochs 6-10), not never in 20 (docs/speed.md: the table)
        "train.perturbed_val_every": 5,
        "split.val_per_class": 100,       # 1,000 validation images, not 40,000: the loss the schedule watches
        "seeds.train": [0, 1, 2],
        "attack.test_images": 1000,
        "attack.apgd_t.targets": 3,       # the three likeliest wrong classes, not all nine: a third of the cost
        "umap.fit_samples": 2000,
        "umap.plot_samples": 1000,
    },
}


FP32_NOTE = ("note: this CPU has no bf16 units, so the preset runs in fp32 (compute.fast=false): slower, and from the "
             "same seeds it trains other models than the published bf16 runs (a replication, not a copy: "
             "docs/reproducibility.md)")


def machine_settings() -> dict[str, object]:
    """What this CPU decides, said out loud: bf16 autocast where it has bf16 units, else fp32 (the two
    differ in bits, so the choice is a param DVC records, not a guess each stage makes)."""
    import torch

    from robust_cifar.compute import bf16_supported
    return {"compute.fast": bf16_supported(torch.device("cpu"))}


def overrides(name: str, machine: dict[str, object] | None = None) -> list[str]:
    """`-S key=value` arguments, values in YAML (lists as [a, b])."""
    def text(value) -> str:
        return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value).lower() \
            if isinstance(value, bool) else str(value)
    settings = {**PRESETS[name], **(machine_settings() if machine is None else machine)}
    return [argument for key, value in settings.items() for argument in ("-S", f"{key}={text(value)}")]


def command(name: str, archive: str | None, archive_md5: str | None, experiment: str | None,
            machine: dict[str, object] | None = None) -> list[str]:
    data = []
    if archive == "":   # asked for the download: params.yaml's archive, if it names one, is not used
        data += ["-S", "data.archive=''", "-S", "data.archive_md5=''"]
    elif archive:
        if not archive_md5 and Path(archive).is_file():   # DVC records a local archive by its md5 param alone
            archive_md5 = md5_of(archive)
        md5 = archive_md5 or "''"   # a missing archive: the empty string spelled out, and check_params names the file
        data += ["-S", f"data.archive={quoted(archive)}", "-S", f"data.archive_md5={md5}"]
    experiment = experiment or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # dvc.yaml as the target: without one, `dvc exp run` deletes the outputs it recorded of stages the new
    # params drop before check_params can refuse anything (docs/experiments.md "Working with experiments")
    return [sys.executable, "-m", "dvc", "exp", "run", "-n", experiment, *overrides(name, machine), *data, "dvc.yaml"]


def check_before_running(cmd: list[str], destination: Path | None) -> None:
    """Refuse (a UserError) what would fail only after DVC edited params.yaml or the run ended."""
    name = cmd[cmd.index("-n") + 1]
    if not valid_exp_name(name):   # DVC refuses it too, but only after it has started
        shown = name if len(name) <= 60 else f"{name[:40]}... ({len(name)} characters)"
        raise ParamsError(f"--name {shown!r} is not a valid experiment name: use at most {LONGEST_EXP_NAME} letters, "
                          "digits and . _ = , + - (no spaces or '/'; not starting with '.' or '-')")
    if name in existing_names(Path.cwd()):   # DVC refuses it too, advising its -f, which this command does not take
        raise ParamsError(f"--name {name}: an experiment of this commit has that name; choose another, or remove it "
                          f"first (`dvc exp remove {name}`)")
    settings = [cmd[i + 1] for i, part in enumerate(cmd) if part == "-S"]
    check_on_this_machine(with_overrides(load_params(), settings))
    check_editable(Path("params.yaml"))
    if destination is not None:
        check_destination(destination, preset=dict(setting.split("=", 1) for setting in settings)["preset"])


PUBLISHED_MARK = ": a published run"   # the end of the title line of the README that publish writes


def is_publication(folder: Path) -> bool:
    """Whether `folder` holds a run that publish wrote (its README's title says so)."""
    try:
        lines = (folder / "README.md").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(lines) and lines[0].endswith(PUBLISHED_MARK)


def published_preset(folder: Path) -> str | None:
    """The preset of the run published in `folder`, as its README's provenance names it (None: not said)."""
    found = re.search(r"^- \*\*preset\*\*: `([^`]+)`", (folder / "README.md").read_text(errors="replace"), re.M)
    return found.group(1) if found else None


def check_destination(destination: Path, preset: str) -> None:
    """A folder that can be made or replaced whole: not the project or a folder holding it, not in a folder of
    DVC's outputs, .git, .dvc or .cache, not a link, a folder of other files, another `preset`'s publication or
    a mount point, not a file, under a writable parent."""
    target, project = destination.resolve(), Path.cwd().resolve()
    if target == project or target in project.parents:
        held = "this project" if target == project else "a folder holding this project"
        raise PublishError(f"--publish {destination}: is {held}, and the folder is replaced whole; "
                           "name a folder for the results alone, e.g. results/<name>")
    inside = next((folder for folder in OUTPUT_FOLDERS if (project / folder) in [target, *target.parents]), None)
    if inside:
        raise PublishError(f"--publish {destination}: lies in {inside}/, where DVC writes the pipeline's outputs (a rerun "
                           "may delete it); name a folder outside it, e.g. results/<name>")
    kept = next((folder for folder in (*CONTROL_FOLDERS, Path(".cache")) if (project / folder) in [target, *target.parents]),
                None)
    if kept:   # what Git never commits, or what DVC, Git and the runs keep for themselves
        raise PublishError(f"--publish {destination}: lies in {kept}/, which is no place for results to commit; name a "
                           "folder outside it, e.g. results/<name>")
    if destination.is_symlink():   # replacing it whole would replace the link, not the folder it names
        raise PublishError(f"--publish {destination}: is a symbolic link (to {os.readlink(destination)}); name the "
                           f"folder itself ({target}) or a new one")
    if destination.is_dir() and destination.is_mount():
        raise PublishError(f"--publish {destination}: is a mount point, which cannot be replaced whole; name a folder in it")
    if destination.is_dir() and any(destination.iterdir()) and not is_publication(destination):
        raise PublishError(f"--publish {destination}: holds files that are not a published run, and the folder is "
                           "replaced whole; name a new folder, or an earlier run's")
    other = published_preset(destination) if destination.is_dir() and is_publication(destination) else None
    if other not in (None, preset):
        raise PublishError(f"--publish {destination}: holds the published run of the {other} preset, which a {preset} "
                           f"run would replace; name a folder of its own, e.g. results/{preset}-<date>")
    if destination.exists() and not destination.is_dir():
        raise PublishError(f"--publish {destination}: is a file; name a folder (it is replaced whole)")
    parent = next((folder for folder in [destination, *destination.parents] if folder.exists()), Path("."))
    if not parent.is_dir():
        raise PublishError(f"--publish {destination}: {parent} is a file, not a folder; name another place")
    if not os.access(parent, os.W_OK | os.X_OK) or (destination.is_dir() and not os.access(destination, os.W_OK)):
        raise PublishError(f"--publish {destination}: {parent} is not writable; name a folder you can write")
    probe_staging(destination)


def staging_folder(destination: Path) -> Path:
    """Where publish builds a run's files before swapping them in for `destination`."""
    return destination.with_name(destination.name + ".publishing")


def probe_staging(destination: Path) -> None:
    """Make publish's staging folder and a file in it, then remove what was made: what os.access cannot
    tell (a root user under /proc, a read-only or special filesystem) fails now, not after the run."""
    staging = staging_folder(destination)
    made = [folder for folder in [staging, *staging.parents] if not folder.exists()]   # deepest first
    probe = staging / ".publish-probe"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as error:
        raise PublishError(f"--publish {destination}: cannot write there ({error.strerror}); "
                           "name a folder you can write") from None
    finally:
        if staging.is_dir():
            probe.unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()


# What a published run holds: small files that say what the run found (models and embeddings stay in DVC), and
# each of its methods' (not those of a method the params no longer list, which DVC leaves in the workspace).
PUBLISHED = (paths.SUMMARY_MD, paths.SUMMARY_JSON, paths.ACCURACY_FIGURE, paths.ROBUSTNESS_FIGURE, TRAINING_CURVES,
             paths.EXAMPLES, paths.HEADLINE)
PUBLISHED_PER_METHOD = (paths.aggregated, paths.umap_figure)


def publish(destination: Path, command_line: str, wall_seconds: float | None = None) -> list[Path]:
    """Copy the workspace's results into `destination` (for git), with a README saying how they were made.

    `wall_seconds`: how long the command took from start to end, dvc's own work included (on a fresh
    clone, the whole study). Built beside the destination, then swapped in: an earlier run's files never stay
    next to this one's, and a full disk or a signal while copying leaves the destination as it was."""
    staging = staging_folder(destination)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        copied = build_publication(staging, destination, command_line, wall_seconds)
    except BaseException as error:   # a full disk, a signal: no half-built folder stays beside the results
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            raise DiskFullError(f"no space left on the disk holding {destination.parent} while publishing into "
                                f"{destination} (the partial copy was removed)") from None
        raise
    replaced = destination.with_name(destination.name + ".replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    try:
        with signals_held():   # the whole swap or none of it: a signal between the renames left no publication
            if destination.exists():
                destination.rename(replaced)
            staging.rename(destination)
            shutil.rmtree(replaced, ignore_errors=True)
    except KeyboardInterrupt as stopped:   # it came during the swap, which is done: the publication is whole
        stopped.published = copied
        raise
    return copied


def build_publication(staging: Path, destination: Path, command_line: str, wall_seconds: float | None) -> list[Path]:
    """Write the publication for `destination` into the folder `staging`; the files it will hold there."""
    staging.mkdir(parents=True)
    params = load_params()
    methods, seeds = params.method_names(), params.train_seeds()
    copied = []
    for source in [*PUBLISHED, *(path_of(method) for path_of in PUBLISHED_PER_METHOD for method in methods)]:
        if source.is_file():
            relative = source.relative_to("reports")
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / relative)
            copied.append(destination / relative)
    summary = json.loads(Path("reports/summary.json").read_text())
    (staging / "README.md").write_text("\n".join([
        f"# {destination.name}{PUBLISHED_MARK}", "",
        "Reproduce it from a clone of this repository at the commit below (the numbers are bit-identical on the "
        "same kind of CPU):", "",
        "```bash", command_line, "```", "",
        f"The independent check, `crosscheck.md` where the folder has one: `python -m tools.crosscheck --out "
        f"{destination}/crosscheck.md`, run after the command in the same workspace (publishing again replaces the "
        "folder, that file included).", "",
        "## What produced it", "", *summary["provenance"],
        *run_lines(devices(paths.TRAINING, [paths.run_name(method, seed) for method in methods for seed in seeds]),
                   git_commit()),
        *([f"- **wall time of the command**: {wall_seconds / 60:.1f} min from start to end (stages that DVC "
           "reused from its cache took none)."] if wall_seconds is not None else []),
        *time_lines(times_of_runs(stage_times(timings()), methods, seeds), wall_seconds), "",
        "## Verdict", "", *[f"- {sentence}" for sentence in summary["verdict"]], "",
        "`summary.md` holds every table; `metrics.json` the headline numbers (`dvc metrics show`), `aggregate/`",
        "every number's mean and std over seeds; the PNGs are the figures of `dvc plots show`.", ""]))
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--archive", help="a local CIFAR-10 archive (data.archive); \"\" downloads the official one; "
                        "default: params.yaml's data.archive")
    parser.add_argument("--archive-md5", help="its md5 (data.archive_md5, what DVC records of it); default: computed")
    parser.add_argument("--name", help="the experiment's name (default: <preset>-<date>-<time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command instead of running it")
    parser.add_argument("--publish", type=Path, metavar="DIR",
                        help="after a successful run, copy its summary, metrics and figures into DIR (e.g. results/quick-cpu)")
    args = parser.parse_args(argv)
    if args.archive_md5 and args.archive is None:
        parser.error("--archive-md5 is the md5 of --archive: give the archive too")
    machine = machine_settings()
    cmd = command(args.preset, args.archive, args.archive_md5, args.name, machine)
    try:
        check_before_running(cmd, args.publish)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)   # the one line: no command that will not run
        return 2
    print(" ".join(shlex.quote(part) for part in cmd), flush=True)
    if not machine["compute.fast"]:
        print(FP32_NOTE, flush=True)
    if args.dry_run:
        return 0
    try:
        workspace = hold_workspace()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with contextlib.closing(workspace):
        return run_and_publish(cmd, args, argv)


def run_and_publish(cmd: list[str], args: argparse.Namespace, argv: list[str] | None) -> int:
    """The experiment, with params.yaml put back if it fails, then, where it succeeded, its publication."""
    started = time.perf_counter()
    stop_on_signals()   # TERM and HUP too: DVC and its stage are stopped, not left running
    with restored_on_failure(Path("params.yaml"), lock=Path("dvc.lock")) as outcome:
        try:
            outcome.returncode = run_in_group(cmd)
        except KeyboardInterrupt as stopped:
            signum = signal_of(stopped)
            print(f"interrupted ({Stopped(signum).name}): rerun the same command to continue; finished stages "
                  "are reused", file=sys.stderr)
            return Stopped(signum).exit_code
    returncode = outcome.returncode
    if returncode == 0 and args.publish:
        again = (f"the run finished and {args.publish} is as it was; to publish, rerun the command"
                 + (" with a new --name" if args.name else "") + " (DVC reuses every stage from its run cache)")
        try:
            published = publish(args.publish, "python -m tools.preset " + " ".join(
                shlex.quote(part) for part in (argv if argv is not None else sys.argv[1:])),
                wall_seconds=time.perf_counter() - started)
        except DiskFullError as error:
            print(f"error: {error}: free some space there; {again}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as stopped:
            signum = signal_of(stopped)
            done = getattr(stopped, "published", None)
            print(f"interrupted ({Stopped(signum).name}) " + (
                f"as the run was published: {len(done)} files in {args.publish}, whole" if done is not None else
                f"while publishing: {again}"), file=sys.stderr)
            return Stopped(signum).exit_code
        print(f"published {len(published)} files to {args.publish}")
    return returncode


if __name__ == "__main__":
    run_tool(main)
