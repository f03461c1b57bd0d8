"""Where each stage reads and writes; dvc.yaml names the same paths.

A run is one method trained with one seed (`baseline-0`); per-run stages take the method and the
seed as arguments (dvc.yaml's matrix passes them), so adding a seed adds stages and changes none.
"""
import re
from pathlib import Path

from robust_cifar.errors import ParamsError

RAW = Path("data/raw/cifar10.npz")
SOURCE = Path("data/raw/source.json")
SPLIT = Path("data/split/indices.npz")
PLAN = Path("data/perturb/plan.npz")
PARAMS_CHECKED = Path("data/params/checked.txt")

_METHOD = r"[a-z][a-z0-9_]*"


def no_arguments(argv: list[str]) -> None:
    """A stage of the whole pipeline takes none: an argument (a stray `--help` ran the stage) is refused."""
    if argv:
        raise ParamsError(f"this stage takes no arguments, got {' '.join(argv)}: run it through dvc (`dvc repro "
                          "<stage>`); `--help` says what it does")


def method_argument(argv: list[str]) -> str:
    """The method a per-method stage was started for; a plain name, never a path."""
    if len(argv) != 1 or not re.fullmatch(_METHOD, argv[0]):
        raise ParamsError(f"expected a method name as the argument, got {' '.join(argv) or 'none'}: "
                          "run the stage through dvc (`dvc repro summarize`)")
    return argv[0]


def run_arguments(argv: list[str]) -> tuple[str, int]:
    """(method, seed) of a per-run stage."""
    if len(argv) != 2 or not re.fullmatch(_METHOD, argv[0]) or not argv[1].isdigit():
        raise ParamsError(f"expected a method name and a training seed as arguments, got {' '.join(argv) or 'none'}: "
                          "run per-run stages through dvc (`dvc repro train@<method>-<seed>`)")
    return argv[0], int(argv[1])


def run_name(method: str, seed: int) -> str:
    return f"{method}-{seed}"


def model(method: str, seed: int) -> Path:
    return Path(f"models/{run_name(method, seed)}.pt")


TRAINING = Path("reports/training")


def training_live(method: str, seed: int) -> Path:
    """dvclive's folder for one training run: metrics.json (final values) and plots/metrics/**.tsv."""
    return Path(f"reports/training/{run_name(method, seed)}")


def embeddings(method: str, seed: int) -> Path:
    return Path(f"data/embeddings/{run_name(method, seed)}.npz")


SEED_RESULTS = Path("reports/seeds")


def seed_metrics(method: str, seed: int) -> Path:
    return SEED_RESULTS / method / f"{seed}.json"


def seed_predictions(method: str, seed: int) -> Path:
    return SEED_RESULTS / method / f"{seed}.csv"


def seed_results(method: str) -> Path:
    return SEED_RESULTS / method


ROBUSTNESS = Path("reports/robustness")


def robustness(method: str, seed: int) -> Path:
    return ROBUSTNESS / method / f"{seed}.json"


def robustness_per_image(method: str, seed: int) -> Path:
    return ROBUSTNESS / method / f"{seed}.csv"


def robustness_results(method: str) -> Path:
    return ROBUSTNESS / method


AGGREGATES = Path("reports/aggregate")


def aggregated(method: str) -> Path:
    """Across-seed mean and std of every number evaluate and robustness wrote: what summarize reads."""
    return AGGREGATES / f"{method}.json"


# Each method's headline numbers: the one file of dvc.yaml's `metrics` (`dvc metrics show`, `dvc exp show`)
HEADLINE = Path("reports/metrics.json")


def predictions(method: str) -> Path:
    return Path(f"reports/predictions/{method}.csv")


def umap_figure(method: str) -> Path:
    return Path(f"reports/umap/{method}.png")


SUMMARY_MD = Path("reports/summary.md")
SUMMARY_JSON = Path("reports/summary.json")
EXAMPLES = Path("reports/examples.png")
ACCURACY_FIGURE = Path("reports/accuracy.png")
ROBUSTNESS_FIGURE = Path("reports/robustness_curve.png")
