"""summarize: every method's accuracy -> reports/summary.md, reports/summary.json and reports/accuracy.png"""
import json

from robust_cifar.figures import accuracy_bars
from robust_cifar.methods import METHODS
from robust_cifar.outputs import prepare, run_stage, write_json
from robust_cifar.summary import all_split_rows, headline_rows, markdown_report, single_perturbation_rows
from stages import paths


def main(argv: list[str]) -> None:
    all_metrics = {}
    for method in METHODS:
        path = paths.metrics(method)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `dvc repro eval@{method}`")
        all_metrics[method] = json.loads(path.read_text())
    report = markdown_report(all_metrics)
    paths.SUMMARY_MD.parent.mkdir(parents=True, exist_ok=True)
    paths.SUMMARY_MD.write_text(report)
    write_json(paths.SUMMARY_JSON, {"test": headline_rows(all_metrics),
                                    "test_single_perturbation": single_perturbation_rows(all_metrics),
                                    "all_splits": all_split_rows(all_metrics)})
    accuracy_bars(all_metrics).savefig(prepare(paths.ACCURACY_FIGURE), dpi=110)
    print(report)


if __name__ == "__main__":
    run_stage(main)
