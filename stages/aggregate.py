"""aggregate@<method>: every seed's metrics and robust accuracies -> their mean and std per key, reports/aggregate/<method>.json
(what summarize reads), and the figures seed's test predictions -> reports/predictions/<method>.csv"""
import shutil

from robust_cifar.conditions import knn_k
from robust_cifar.outputs import atomic_path, check_writable, write_json
from robust_cifar.params import load_params
from robust_cifar.reporting.aggregate import aggregate
from robust_cifar.reporting.results import KNN_K, METHOD, read_correct, read_runs, stamped
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    method = paths.method_argument(argv)
    check_writable(paths.aggregated(method), paths.predictions(method))
    params = load_params()
    seeds, figures_seed, k = params.train_seeds(), params.seed("figures"), knn_k(params)
    per_seed = read_runs(paths.seed_results(method), paths.robustness_results(method), seeds, method, k)
    predictions = paths.seed_predictions(method, figures_seed)
    read_correct(predictions, f"evaluate@{method}-{figures_seed}")   # refused here, not in the figures drawn from it
    write_json(paths.aggregated(method), stamped({KNN_K: k, **aggregate(per_seed)}, METHOD, method))
    with atomic_path(paths.predictions(method)) as partial:
        shutil.copyfile(predictions, partial)
    print(f"aggregate@{method}: seeds {sorted(per_seed)} -> {paths.aggregated(method)}")


if __name__ == "__main__":
    run_stage(main)
