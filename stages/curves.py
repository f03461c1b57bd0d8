"""curves: every method's per-epoch training logs (dvclive, the seeds.figures run) in one picture that needs no browser
-> reports/training_curves.png"""
from pathlib import Path

from robust_cifar.outputs import check_writable, save_figure
from robust_cifar.params import load_params
from robust_cifar.reporting.curves import read_training_curves, training_curves
from robust_cifar.stage import run_stage
from stages import paths

# Here rather than in stages/paths.py: every stage depends on that file, so a new name there would
# rerun the whole pipeline.
TRAINING_CURVES = Path("reports/training_curves.png")


def main(argv: list[str]) -> None:
    paths.no_arguments(argv)
    check_writable(TRAINING_CURVES)
    curves = {}
    params = load_params()
    seed = params.seed("figures")
    for method in params.method_names():
        run = paths.run_name(method, seed)
        curves[method] = read_training_curves(paths.training_live(method, seed), f"train@{run}")
    save_figure(training_curves(curves), TRAINING_CURVES)
    print(f"curves: {', '.join(curves)} -> {TRAINING_CURVES}")


if __name__ == "__main__":
    run_stage(main)
