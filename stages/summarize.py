"""summarize: every method's accuracy (mean +- std over seeds) and its paired comparison with the baseline
-> reports/summary.md, reports/summary.json, the figures, and each method's headline numbers -> reports/metrics.json"""
from robust_cifar.conditions import decision_labels, knn_k
from robust_cifar.outputs import check_writable, save_figure, write_json, write_text, written_together
from robust_cifar.params import load_params
from robust_cifar.reporting.figures import accuracy_bars, robustness_curves
from robust_cifar.reporting.provenance import FULL, RUN_FACTS_ELSEWHERE, SOURCE, provenance_lines, settings
from robust_cifar.reporting.results import read_correct, read_json, read_metrics, read_runs
from robust_cifar.stage import run_stage
from robust_cifar.training.methods.registry import listed_methods
from robust_cifar.reporting.summarize import (all_split_rows, compare_with_baseline, gate_failures, headline_metrics,
                                              headline_rows, markdown_report, robust_rows, single_perturbation_rows,
                                              unchecked_gates)
from stages import paths


def main(argv: list[str]) -> None:
    paths.no_arguments(argv)
    params = load_params()
    check_writable(paths.SUMMARY_MD, paths.HEADLINE, paths.SUMMARY_JSON, paths.ACCURACY_FIGURE, paths.ROBUSTNESS_FIGURE)
    methods, seeds, k = listed_methods(params), params.train_seeds(), knn_k(params)
    labels = decision_labels(k)
    run_settings = settings(params)
    provenance = provenance_lines(read_json(paths.SOURCE, "download", SOURCE), run_settings)
    all_metrics = {method: read_metrics(paths.aggregated(method), f"aggregate@{method}", method, k) for method in methods}
    per_seed = {method: read_runs(paths.seed_results(method), paths.robustness_results(method), seeds, method, k)
                for method in methods}
    correct = {method: {seed: read_correct(paths.seed_predictions(method, seed), f"evaluate@{method}-{seed}")
                        for seed in seeds} for method in methods}
    comparisons = compare_with_baseline(per_seed, correct, labels)
    gates = {method: gate_failures(metrics, labels) for method, metrics in all_metrics.items()}
    unchecked = {method: unchecked_gates(metrics, labels) for method, metrics in all_metrics.items()}
    report = markdown_report(all_metrics, comparisons, labels, gates, [*provenance, RUN_FACTS_ELSEWHERE],
                             comparable_with_write_up=run_settings["preset"] == FULL, unchecked=unchecked)
    with written_together():   # the text and the figures of one run, or all of the last
        write_text(paths.SUMMARY_MD, report)
        write_json(paths.HEADLINE, headline_metrics(all_metrics))
        write_json(paths.SUMMARY_JSON, {
            "provenance": provenance, "settings": run_settings,
            "verdict": [comparison.sentence for comparison in comparisons],
            "comparisons": [comparison.row for comparison in comparisons],
            "sanity_gates": {method: failures for method, failures in gates.items()},
            "sanity_gates_unchecked": unchecked,
            "test": headline_rows(all_metrics, labels),
            "robust": robust_rows(all_metrics, labels),
            "test_single_perturbation": single_perturbation_rows(all_metrics, labels),
            "all_splits": all_split_rows(all_metrics, labels)})
        save_figure(accuracy_bars(all_metrics, labels), paths.ACCURACY_FIGURE)
        save_figure(robustness_curves(all_metrics, labels), paths.ROBUSTNESS_FIGURE)
    print(report)


if __name__ == "__main__":
    run_stage(main)
