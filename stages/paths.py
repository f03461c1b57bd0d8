"""Where each stage reads and writes; dvc.yaml names the same paths."""
import re
from pathlib import Path

from robust_cifar.errors import ParamsError

RAW = Path("data/raw/cifar10.npz")
SPLIT = Path("data/split/indices.npz")
PLAN = Path("data/perturb/plan.npz")
PARAMS_CHECKED = Path("data/params/checked.txt")
DOWNLOADS = Path(".cache/downloads")
TRANSFER_SOURCE = "baseline"   # the model whose FGM gives every model the same "transfer" inputs


def method_argument(argv: list[str]) -> str:
    """The method a per-method stage was started for (dvc.yaml passes it); a plain name, never a path."""
    if len(argv) != 1 or not re.fullmatch(r"[a-z][a-z0-9_]*", argv[0]):
        raise ParamsError(f"expected one method name as the argument, got {' '.join(argv) or 'none'}: "
                          "run per-method stages through dvc (`dvc repro train@baseline`)")
    return argv[0]


def model(method: str) -> Path:
    return Path(f"models/{method}.pt")


def training_live(method: str) -> Path:
    """dvclive's folder for one training run: metrics.json (final values) and plots/metrics/**.tsv."""
    return Path(f"reports/training/{method}")


def embeddings(method: str) -> Path:
    return Path(f"data/embeddings/{method}.npz")


METRICS = Path("reports/metrics")


def metrics(method: str) -> Path:
    return METRICS / f"{method}.json"


def predictions(method: str) -> Path:
    return Path(f"reports/predictions/{method}.csv")


def umap_figure(method: str) -> Path:
    return Path(f"reports/umap/{method}.png")


SUMMARY_MD = Path("reports/summary.md")
SUMMARY_JSON = Path("reports/summary.json")
EXAMPLES = Path("reports/examples.png")
ACCURACY_FIGURE = Path("reports/accuracy.png")
