"""eval@<method>: head and 3-NN accuracy on train / val / test, clean and perturbed -> reports/metrics/<method>.json
(and the test predictions behind the confusion matrices -> reports/predictions/<method>.csv)"""
from robust_cifar.compute import resolve_device
from robust_cifar.methods import METHODS
from robust_cifar.npz import load_npz
from robust_cifar.outputs import run_stage, write_csv, write_json
from robust_cifar.params import load_params
from robust_cifar.scoring import score_embeddings
from stages import paths


def main(argv: list[str]) -> None:
    params = load_params()
    method = METHODS[params.method(argv[0] if argv else "")]
    k, device = params.knn_k(), resolve_device(params.device())
    arrays = load_npz(paths.embeddings(method.name), f"embed@{method.name}")
    metrics, predictions = score_embeddings(arrays, method.has_head, k, device)
    write_json(paths.metrics(method.name), metrics)

    # The confusion matrices show the method's own decision: its head, or the 3-NN when it has none.
    decision = "head" if method.has_head else "knn"
    class_names = [str(name) for name in arrays["class_names"]]
    rows = [{"actual": class_names[actual], "clean": class_names[clean], "perturbed": class_names[perturbed]}
            for actual, clean, perturbed in zip(arrays["test.labels"], predictions[f"test.clean.{decision}"],
                                                predictions[f"test.perturbed.{decision}"])]
    write_csv(paths.predictions(method.name), rows)
    test = metrics["test"]
    print(f"eval@{method.name}: test clean / perturbed / transfer "
          + " | ".join(f"{kind} {test['clean'][kind]:.4f} / {test['perturbed'][kind]:.4f} / {test['transfer'][kind]:.4f}"
                       for kind in test["clean"]))


if __name__ == "__main__":
    run_stage(main)
