"""Where each stage reads and writes; dvc.yaml names the same paths."""
from pathlib import Path

RAW = Path("data/raw/cifar10.npz")
SPLIT = Path("data/split/indices.npz")
PLAN = Path("data/perturb/plan.npz")
DOWNLOADS = Path(".cache/downloads")


def model(method: str) -> Path:
    return Path(f"models/{method}.pt")


def training_log(method: str) -> Path:
    return Path(f"reports/training/{method}.csv")


def validation_log(method: str) -> Path:
    return Path(f"reports/validation/{method}.csv")


def embeddings(method: str) -> Path:
    return Path(f"data/embeddings/{method}.npz")


def metrics(method: str) -> Path:
    return Path(f"reports/metrics/{method}.json")


def predictions(method: str) -> Path:
    return Path(f"reports/predictions/{method}.csv")


def umap_figure(method: str) -> Path:
    return Path(f"reports/umap/{method}.png")


SUMMARY_MD = Path("reports/summary.md")
SUMMARY_JSON = Path("reports/summary.json")
EXAMPLES = Path("reports/examples.png")
ACCURACY_FIGURE = Path("reports/accuracy.png")
