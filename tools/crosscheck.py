"""An independent check of the robustness stage: the same models and test images attacked by the
reference code of AutoAttack (pyautoattack: Croce and Hein's own implementation, a test requirement),
the 3-NN scored by scikit-learn, per image; the project's robust accuracy must not exceed it by
more than the tolerance.

    python -m tools.crosscheck                      # every method and seed of the workspace's last run
    python -m tools.crosscheck --out results/quick-cpu/crosscheck.md

What the reference attacks, at the study's eps (from each robustness report), true labels, fp32:
- a head: AutoAttack's standard evaluation (APGD-CE, APGD-T over 9 targets, FAB-T, Square with 5,000
  queries: RobustBench's), and APGD-CE transferred from the baseline's head of the same seed;
- a 3-NN: the reference APGD-CE and APGD-DLR on soft k-NN surrogates (per class logsumexp of
  cosine / T over all clean training embeddings, fp32, computed here) at T = 0.01, 0.03, 0.1, each
  run's highest-loss and fooling images scored by scikit-learn's KNeighborsClassifier; and the
  transfer from the baseline's head.
An image counts as robust for the reference only if it is right on the clean image and every
reference attack left it right. Only images still robust are attacked by the next attack (as
AutoAttack does), so the check costs little more than its first attack.

Exit status 1 when a project number is more than --tolerance above the reference's; 2 for arguments or
files it cannot check (one line, before any attack), a workspace whose outputs `dvc status` finds out of date
among them: the check scores with today's params.yaml.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from robust_cifar.code_deps import CHECK_STAGE
from robust_cifar.conditions import decision_labels, knn_k
from robust_cifar.data.split import load_splits
from robust_cifar.errors import InputError, ParamsError
from robust_cifar.model import load_model
from robust_cifar.outputs import check_report_file, write_text
from robust_cifar.params import VALIDATED_ELSEWHERE, load_params
from robust_cifar.signals import run_tool
from robust_cifar.training.methods.registry import REFERENCE_METHOD
from stages import paths

TEMPERATURES = (0.01, 0.03, 0.1)
TOLERANCE = 0.02
TITLE = "# Robust accuracy, checked by an independent attack library"   # the report's first line
RUN_STAGES = ("train", "robustness")   # what made the files the check reads of a run
ITERATIONS = 100
HEAD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")   # AutoAttack's standard version


class SoftKnn(torch.nn.Module):
    """Class score = logsumexp over the class's clean training embeddings of cosine / T."""

    def __init__(self, model, fit: torch.Tensor, fit_labels: torch.Tensor, temperature: float):
        super().__init__()
        self.model, self.fit, self.temperature = model, F.normalize(fit.float(), dim=1), temperature
        self.members = [(fit_labels == c).nonzero().squeeze(1) for c in range(int(fit_labels.max()) + 1)]

    def forward(self, x):
        scaled = F.normalize(self.model.embed(x).float(), dim=1) @ self.fit.T / self.temperature
        return torch.stack([scaled[:, rows].logsumexp(dim=1) for rows in self.members], dim=1)


def reference_attacks():
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    return AutoAttack, APGDAttack


def apgd_images(score, x, y, eps, loss, iterations, device) -> list[torch.Tensor]:
    """The reference APGD's single run: its highest-loss and its fooling images (seed 0)."""
    _, APGDAttack = reference_attacks()
    attack = APGDAttack(score, n_iter=iterations, eps=eps, loss=loss, seed=0, device=device)
    attack.init_hyperparam(x)
    torch.manual_seed(0)
    best, _, _, fooling = attack.attack_single_run(x, y)
    return [best.detach(), fooling.detach()]


def narrow(robust: torch.Tensor, attack, still_correct) -> None:
    """Attack the images still robust; those an adversarial image gets wrong are robust no more."""
    rows = robust.nonzero().squeeze(1)
    if len(rows) == 0:
        return
    for images in attack(rows):
        robust[rows[~still_correct(images, rows)]] = False


def fp32_embeddings(model, images: np.ndarray, device: torch.device, batch_size: int) -> torch.Tensor:
    """The model's embeddings of uint8 NCHW images, in float32, batch by batch (the robustness stage's batches, so
    that both score the same neighbours)."""
    with torch.no_grad():
        return torch.cat([model.embed(torch.from_numpy(images[start:start + batch_size]).float().div(255).to(device))
                          for start in range(0, len(images), batch_size)])


def check_run(method: str, seed: int, device: torch.device, iterations: int = ITERATIONS,
              head_attacks: tuple[str, ...] = HEAD_ATTACKS, temperatures: tuple[float, ...] = TEMPERATURES) -> list[dict]:
    report = json.loads(paths.robustness(method, seed).read_text())
    with paths.robustness_per_image(method, seed).open(newline="") as handle:
        per_image = list(csv.DictReader(handle))
    eps = report["study_eps_255"] / 255
    chosen = np.array([int(row["test_index"]) for row in per_image])
    splits, _ = load_splits(paths.RAW, paths.SPLIT)
    x = torch.from_numpy(splits["test"].images[chosen]).float().div(255).to(device)
    y = torch.from_numpy(splits["test"].labels[chosen]).long().to(device)
    model = load_model(paths.model(method, seed), device, run=(method, seed))[0].float().eval()
    baseline = (None if method == REFERENCE_METHOD else
                load_model(paths.model(REFERENCE_METHOD, seed), device, run=(REFERENCE_METHOD, seed))[0].float().eval())
    params = load_params()
    # as the robustness stage: not embed's bf16 ones
    fit = fp32_embeddings(model, splits["train"].images, device,
                          params.value("compute.eval_batch_size", VALIDATED_ELSEWHERE))
    fit_labels = torch.from_numpy(splits["train"].labels).long().to(device)
    k = knn_k(params)
    knn = KNeighborsClassifier(n_neighbors=k).fit(fit.cpu().numpy(), fit_labels.cpu().numpy())

    def knn_right(images, rows):
        with torch.no_grad():
            embeddings = model.embed(images).float().cpu().numpy()
        return torch.from_numpy(knn.predict(embeddings)).to(device) == y[rows]

    def head_right(images, rows):
        with torch.no_grad():
            return model(images).argmax(1) == y[rows]

    def transfer(rows):
        return apgd_images(baseline, x[rows], y[rows], eps, "ce", iterations, device) if baseline is not None else []

    results = []
    decisions = {"knn": knn_right}
    if "head" in report["robust"]:
        decisions = {"head": head_right, **decisions}
    for decision, right in decisions.items():
        robust = right(x, torch.arange(len(y), device=device))
        if decision == "head":
            AutoAttack, APGDAttack = reference_attacks()
            from pyautoattack.autopgd_base import APGDAttack_targeted
            def auto_attack(rows):
                standard = tuple(head_attacks) == HEAD_ATTACKS
                attack = AutoAttack(model, norm="Linf", eps=eps, version="standard" if standard else "custom",
                                    attacks=None if standard else list(head_attacks), seed=0, device=device)
                if iterations != ITERATIONS:   # the step-size checkpoints are set at construction
                    attack.apgd = APGDAttack(model, n_iter=iterations, eps=eps, seed=0, device=device)
                    attack.apgd_targeted = APGDAttack_targeted(model, n_iter=iterations, eps=eps, seed=0,
                                                               device=device)
                attack.logger.setLevel(logging.WARNING)
                return [attack.run_standard_evaluation(x[rows], y[rows], batch_size=500)[0]]
            narrow(robust, auto_attack, right)
        else:
            for temperature in temperatures:
                for loss in ("ce", "dlr"):
                    narrow(robust, lambda rows: apgd_images(SoftKnn(model, fit, fit_labels, temperature), x[rows],
                                                            y[rows], eps, loss, iterations, device), right)
        narrow(robust, transfer, right)
        ours = torch.tensor([row[f"robust.{decision}"] == "1" for row in per_image], device=device)
        results.append({"run": f"{method}-{seed}", "decision": decision_labels(k)[decision],
                        "images": len(y), "project": ours.float().mean().item(),
                        "reference": robust.float().mean().item(),
                        "overcounted": int((ours & ~robust).sum())})
    return results


def table(rows: list[dict], tolerance: float) -> str:
    lines = ["| run | decision | images | project robust (%) | reference robust (%) | project - reference (points) "
             "| robust for the project, broken by the reference | within tolerance |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        difference = 100 * (row["project"] - row["reference"])
        lines.append(f"| {row['run']} | {row['decision']} | {row['images']} | {100 * row['project']:.1f} | "
                     f"{100 * row['reference']:.1f} | {difference:+.1f} | {row['overcounted']} | "
                     f"{'yes' if row['project'] <= row['reference'] + tolerance + 1e-9 else '**NO**'} |")
    return "\n".join(lines)


AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")   # what its attacks_to_run takes


def is_report(path: Path) -> bool:
    """Whether `path` holds an earlier report of this tool (which --out may replace)."""
    with path.open(errors="replace") as report:
        return report.readline().rstrip("\n") == TITLE


def runs_to_check(args: argparse.Namespace, params) -> list[tuple[str, int]]:
    """The (method, seed) runs the arguments name, each a run of this workspace whose files are there; anything
    else (a method or seed the params lack, a missing model, a bad number, an --out that cannot be written) is
    a UserError now, before hours of attacks."""
    methods = args.methods if args.methods is not None else params.method_names()
    seeds = args.seeds if args.seeds is not None else params.train_seeds()
    problems = [f"--methods {method}: not in params.yaml's `methods` ({', '.join(params.method_names())})"
                for method in methods if method not in params.method_names()]
    problems += [f"--seeds {seed}: not in params.yaml's `seeds.train` {params.train_seeds()}"
                 for seed in seeds if seed not in params.train_seeds()]
    problems += ["--seeds: give at least one seed (or leave it out: every seed of `seeds.train`)"] * (not seeds)
    problems += ["--methods: give at least one method (or leave it out: every method of `methods`)"] * (
        args.methods is not None and not args.methods)
    problems += [f"--head-attacks {name}: not one of AutoAttack's ({', '.join(AUTOATTACK_ATTACKS)})"
                 for name in args.head_attacks if name not in AUTOATTACK_ATTACKS]
    problems += [f"--iterations {args.iterations}: must be at least 1"] * (args.iterations < 1)
    problems += [f"--tolerance {args.tolerance}: must be from 0 to 1 (a fraction of the images)"] * (
        not 0 <= args.tolerance <= 1)
    problems += [f"--temperatures {t}: must be a finite number above 0" for t in args.temperatures
                 if not (t > 0 and math.isfinite(t))]
    if problems:
        raise ParamsError(problems[0])
    if args.out is not None:   # before the files and `dvc status` (seconds): a bad --out says so at once
        check_report_file(args.out, "--out", ".md", "results/<name>/crosscheck.md", earlier=is_report)
        published = Path(args.out).parent / paths.SUMMARY_JSON.name   # a folder `preset --publish` wrote
        if published.is_file() and (not paths.SUMMARY_JSON.is_file()
                                    or published.read_bytes() != paths.SUMMARY_JSON.read_bytes()):
            raise InputError(f"--out {args.out}: its folder publishes another run than this workspace's (its "
                             f"{published.name} is not {paths.SUMMARY_JSON}'s): check that run in its own workspace, "
                             "or name another file")
    runs = [(method, seed) for method in methods for seed in seeds]
    needed = [path for method, seed in runs for path in (paths.model(method, seed), paths.robustness(method, seed),
                                                         paths.robustness_per_image(method, seed))]
    missing = [path for path in needed if not path.is_file()]
    if missing:
        raise InputError(f"no {missing[0]}{f' (and {len(missing) - 1} more files)' if len(missing) > 1 else ''}: "
                         "the check reads a reproduced run; `dvc repro` (or `dvc pull`) first")
    stale = stale_stages(runs)
    if stale:   # a false failure otherwise: the reports' 3-NN used another knn.k than the check would, say
        raise InputError(f"the workspace's outputs are not what params.yaml and the code make now (`dvc status`: "
                         f"{stale[0]}{f' and {len(stale) - 1} more' if len(stale) > 1 else ''} changed): run `dvc repro` "
                         "first, or put back what made them (`git checkout HEAD -- params.yaml dvc.lock && dvc checkout`)")
    return runs


def stale_stages(runs: list[tuple[str, int]]) -> list[str]:
    """The stages that made what the check reads of `runs` (and those upstream of them) whose inputs `dvc status`
    finds changed; none where DVC cannot tell (no DVC project here). Not check_params: every params.yaml edit
    changes its input, and its output (that the params passed) stays the same."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    targets = [f"{stage}@{paths.run_name(method, seed)}" for method, seed in runs for stage in RUN_STAGES]
    try:
        with Repo(".") as repo:
            return sorted(set(repo.status(targets=targets, with_deps=True)) - {CHECK_STAGE})
    except DvcException:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", help="default: params.yaml's methods")
    parser.add_argument("--seeds", nargs="*", type=int, help="default: params.yaml's seeds.train")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="accuracy, as a fraction (default 0.02)")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="of every APGD run (default 100)")
    parser.add_argument("--head-attacks", nargs="+", default=list(HEAD_ATTACKS),
                        help="AutoAttack's attacks on a head (default: its standard version)")
    parser.add_argument("--temperatures", nargs="+", type=float, default=list(TEMPERATURES),
                        help="of the soft k-NN surrogates (default 0.01 0.03 0.1)")
    args = parser.parse_args(argv)
    runs = runs_to_check(args, load_params())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for method, seed in runs:
        checked = check_run(method, seed, device, args.iterations, tuple(args.head_attacks), tuple(args.temperatures))
        print("\n".join(table(checked, args.tolerance).splitlines()[2:]), flush=True)
        rows += checked
    text = table(rows, args.tolerance)
    print(text)
    if args.out:
        write_text(args.out, TITLE + "\n\n" + __doc__.split("\n\n")[0]
                   + "\n\n" + text + "\n")   # atomic: an earlier report stays whole when the disk is full
    return 0 if all(row["project"] <= row["reference"] + args.tolerance + 1e-9 for row in rows) else 1


if __name__ == "__main__":
    run_tool(main)
