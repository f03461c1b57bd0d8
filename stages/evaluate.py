"""evaluate@<method>-<seed>: head and 3-NN accuracy on train / val / test, clean and perturbed
-> reports/seeds/<method>/<seed>.json, and the test predictions of the method's own decision
-> reports/seeds/<method>/<seed>.csv"""
from robust_cifar.compute import Compute
from robust_cifar.conditions import knn_k
from robust_cifar.evaluation.embeddings import load_embeddings
from robust_cifar.evaluation.evaluate import has_head, score_embeddings, small_class_warning
from robust_cifar.outputs import check_writable, write_csv, write_json
from robust_cifar.params import load_params
from robust_cifar.reporting.results import KNN_K, PREDICTIONS, RUN, stamped, table_digest
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    params = load_params()
    method, seed = paths.run_arguments(argv)
    run = paths.run_name(method, seed)
    check_writable(paths.seed_predictions(method, seed), paths.seed_metrics(method, seed))
    k, device = knn_k(params), Compute.fp32_from_params(params).device
    arrays = load_embeddings(paths.embeddings(method, seed), run)
    metrics, predictions = score_embeddings(arrays, k, device)
    warning = small_class_warning(k, arrays["train.labels"])
    if warning:
        print(f"evaluate@{run}: {warning}")

    # The confusion matrices show the method's own decision: its head, or the 3-NN when it has none.
    decision = "head" if has_head(arrays) else "knn"
    class_names = [str(name) for name in arrays["class_names"]]
    rows = [{"actual": class_names[actual], "clean": class_names[clean], "perturbed": class_names[perturbed]}
            for actual, clean, perturbed in zip(arrays["test.labels"], predictions[f"test.clean.{decision}"],
                                                predictions[f"test.perturbed.{decision}"])]
    write_csv(paths.seed_predictions(method, seed), rows)
    digest = table_digest(paths.seed_predictions(method, seed).read_bytes())   # ties the table to this run's file
    write_json(paths.seed_metrics(method, seed), stamped({KNN_K: k, PREDICTIONS: digest, **metrics}, RUN, run))
    test = metrics["test"]
    print(f"evaluate@{run}: test clean / perturbed / transfer "
          + " | ".join(f"{kind} {test['clean'][kind]:.4f} / {test['perturbed'][kind]:.4f} / {test['transfer'][kind]:.4f}"
                       for kind in test["clean"]))


if __name__ == "__main__":
    run_stage(main)
