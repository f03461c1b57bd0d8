"""What produced a summary: data source, preset and key settings, device, commit and wall time per stage."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from robust_cifar.machine import cpu_description
from robust_cifar.params import NAME, VALIDATED_ELSEWHERE, Params, Rule
from robust_cifar.schema import TEXT, WHOLE

PRESET = Rule(lambda v: isinstance(v, str) and NAME.fullmatch(v) is not None,
              "a short lower-case name (set by `python -m tools.preset`)")
FULL = "full"


def preset_name(params: Params) -> str:
    return params.value("preset", PRESET)


def settings(params: Params) -> dict:
    """The settings a reader needs to judge the numbers (each read here is declared by summarize)."""
    def read(key):
        return params.value(key, VALIDATED_ELSEWHERE)
    return {"preset": preset_name(params),
            "model": {key: read(f"model.{key}") for key in ("width", "embedding_dim", "dropout")},
            "epochs": read("train.epochs"),
            "train_fraction": read("split.train_fraction"),
            "val_per_class": read("split.val_per_class"),
            "test_per_class": read("split.test_per_class"),
            "seeds": params.train_seeds(),
            "perturb_p": read("perturb.p")}


# The code a run depends on; params.yaml and dvc.lock are left out because `dvc exp run -S` edits them.
CODE = ("robust_cifar", "stages", "dvc.yaml")


def git_commit(root: Path = Path(".")) -> str:
    """The commit the run was made from (+ "with uncommitted code changes" when the code differs)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return (commit or "unknown") + (" with uncommitted code changes" if dirty else "")


def devices(training: Path, runs: list[str]) -> list[str]:
    """Every device these training runs report (dvclive params.yaml of each run): a run the params no longer
    list, whose log DVC leaves in place, is not one of them."""
    found = set()
    for path in (training / run / "params.yaml" for run in runs):
        facts = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
        if "device" in facts:
            found.add(f"{facts['device']}, torch {facts.get('torch', '?')}, {facts.get('threads', '?')} CPU threads")
    return sorted(found)


def stage_times(timings: Path) -> dict[str, float]:
    """Each stage's last wall time (stage.record_time's files); a file that holds none is passed over: a timing is
    a fact about a run, and a damaged one must not fail a publication after the whole run."""
    times = {}
    for path in sorted(timings.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            stage, seconds = record["stage"], record["seconds"]
        except (OSError, ValueError, KeyError, TypeError):   # ValueError: not JSON, or not UTF-8
            continue
        if isinstance(stage, str) and isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            times[stage] = seconds
    return times


def times_of_runs(times: dict[str, float], methods: list[str], seeds: list[int]) -> dict[str, float]:
    """The times (keyed by stage.stage_name: `train-<method>-<seed>`, `aggregate-<method>`, `summarize`) of
    the stages these methods and seeds make, not of a method or seed the params no longer list."""
    def listed(name: str) -> bool:
        _, *arguments = name.split("-")
        return not arguments or arguments[0] in methods and (len(arguments) == 1 or len(arguments) == 2 and (
            arguments[1].isdigit() and int(arguments[1]) in seeds))
    return {name: seconds for name, seconds in times.items() if listed(name)}


def time_lines(times: dict[str, float], wall_seconds: float | None = None) -> list[str]:
    """Wall time per kind of stage (train, embed, ...: how many, in all, the range of one), and what the
    command's wall time left for DVC and the stages' start-up, for a published run's README. Never in
    the summary itself: a rerun that reproduces every number bit for bit still takes a different time,
    and DVC hashes the summary."""
    if not times:
        return []
    kinds: dict[str, list[float]] = {}
    for name, seconds in times.items():
        kinds.setdefault(name.split("-")[0], []).append(seconds)
    total = sum(times.values())
    rows = [f"| {kind} | {len(values)} | {sum(values):.0f} s | {min(values):.0f}-{max(values):.0f} s |"
            for kind, values in sorted(kinds.items(), key=lambda item: -sum(item[1]))]
    context = ""
    if wall_seconds is not None and wall_seconds > total:
        rest = wall_seconds - total
        rows.append(f"| DVC and each stage's start-up (the rest of the wall time) | {len(times)} | {rest:.0f} s | "
                    f"{rest / len(times):.1f} s per stage |")
        context = f" in a wall time of {wall_seconds / 60:.1f} min"
    elif wall_seconds is not None:
        context = " (more than this command's wall time: it reused stages of an earlier run, whose times these are)"
    return [f"- **time budget per stage kind** (each stage's last run on this machine: {total / 60:.1f} min of "
            f"stage time{context}):", "",
            "| stage | runs | in all | one run |", "|---|---|---|---|", *rows, ""]


def run_lines(devices: list[str], commit: str, cpu: str | None = None) -> list[str]:
    """Facts of one run that a bit-identical rerun need not share (device threads, CPU, commit): for a
    published run's README, never for the summary, which DVC hashes."""
    return [f"- **device**: {'; '.join(devices) or 'unknown'}.", f"- **CPU**: {cpu or cpu_description()}.",
            f"- **commit**: {commit}."]


# what the download stage writes to data/raw/source.json and provenance_lines reads
SOURCE = {"archive": TEXT, "md5": TEXT, "description": TEXT, "train_images": WHOLE, "test_images": WHOLE}


def provenance_lines(source: dict, settings: dict) -> list[str]:
    model, epochs = settings["model"], settings["epochs"]
    lines = [
        f"- **data**: {source['archive']} (md5 {source['md5']}): {source['description']}; "
        f"{source['train_images']:,} training and {source['test_images']:,} test images in the archive.",
        f"- **preset**: `{settings['preset']}`: ResNet18 width {model['width']} (64 = standard), embedding "
        f"{model['embedding_dim']}, dropout {model['dropout']}; {epochs} epoch{'' if epochs == 1 else 's'}; train "
        f"fraction {settings['train_fraction']}, validation {settings['val_per_class'] or 'all'} and test "
        f"{settings['test_per_class'] or 'all'} images per class; training seeds {settings['seeds']}; the "
        f"*perturbed* condition applies each perturbation with probability {settings['perturb_p']:g} (`perturb.p`).",
    ]
    return lines


# The summary's pointer to the facts it leaves out; a published README holds those facts instead.
RUN_FACTS_ELSEWHERE = ("- **device, commit and wall time per stage**: not in this file, which a rerun must reproduce "
                       "bit for bit; `python -m tools.preset ... --publish DIR` writes them into DIR/README.md.")
