"""summarize: every method's accuracy -> reports/summary.md, reports/summary.json and reports/accuracy.png"""
import json

from robust_cifar.errors import InputError
from robust_cifar.figures import accuracy_bars
from robust_cifar.outputs import save_figure, write_json, write_text
from robust_cifar.params import load_params
from robust_cifar.stage import run_stage
from robust_cifar.summary import all_split_rows, headline_rows, markdown_report, single_perturbation_rows
from stages import paths


def main(argv: list[str]) -> None:
    all_metrics = {}
    for method in load_params().method_names():
        path = paths.metrics(method)
        if not path.is_file():
            raise InputError(f"{path} not found: run `dvc repro eval@{method}`")
        try:
            all_metrics[method] = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{path} is not valid JSON (truncated?): run `dvc repro -f eval@{method}`") from None
    report = markdown_report(all_metrics)
    write_text(paths.SUMMARY_MD, report)
    write_json(paths.SUMMARY_JSON, {"test": headline_rows(all_metrics),
                                    "test_single_perturbation": single_perturbation_rows(all_metrics),
                                    "all_splits": all_split_rows(all_metrics)})
    save_figure(accuracy_bars(all_metrics), paths.ACCURACY_FIGURE)
    print(report)


if __name__ == "__main__":
    run_stage(main)
