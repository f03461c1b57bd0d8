"""umap_plot@<method>: UMAP of the embeddings of the `seeds.figures` model (fit on its clean training embeddings),
train / val / test x clean / perturbed -> reports/umap/<method>.png"""
import time

import numpy as np
from tqdm import tqdm

from robust_cifar.conditions import SPLITS
from robust_cifar.evaluation.embeddings import load_embeddings
from robust_cifar.outputs import check_writable, save_figure
from robust_cifar.params import load_params
from robust_cifar.reporting.umap_plot import (PANEL_CONDITIONS, UmapConfig, draw_grid, fit_umap, neighbours_used,
                                               sample_indices)
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    params = load_params()
    method = paths.method_argument(argv)
    config, seed, model_seed = UmapConfig.from_params(params), params.seed("umap"), params.seed("figures")
    check_writable(paths.umap_figure(method))
    arrays = load_embeddings(paths.embeddings(method, model_seed), paths.run_name(method, model_seed))
    rng = np.random.default_rng(seed)

    started = time.perf_counter()
    train = arrays["train.clean.embeddings"]
    fitted = sample_indices(len(train), config.fit_samples, rng)
    neighbours = neighbours_used(config.n_neighbors, len(fitted))
    if neighbours != config.n_neighbors:
        print(f"umap_plot@{method}: umap.n_neighbors = {config.n_neighbors} is more than the {len(fitted) - 1} other "
              f"fitted points: UMAP uses {neighbours}, as many as there are")
    # the same images in the clean and perturbed panels, so the two can be compared point for point
    shown = {split: sample_indices(len(arrays[f"{split}.labels"]), config.plot_samples, rng) for split in SPLITS}
    # one bar over the fit and every panel's transform, counted in points: a rough ETA
    with tqdm(total=len(fitted) + len(PANEL_CONDITIONS) * sum(map(len, shown.values())), unit="pt",
              unit_scale=True, desc=f"umap_plot@{method}") as bar:
        bar.set_postfix_str(f"fit on {len(fitted)} clean training embeddings")
        reducer = fit_umap(train[fitted], config.n_neighbors, config.min_dist, seed)
        bar.update(len(fitted))
        panels = {}
        for split in SPLITS:
            for condition in PANEL_CONDITIONS:
                bar.set_postfix_str(f"{split}, {condition}")
                points = reducer.transform(arrays[f"{split}.{condition}.embeddings"][shown[split]])
                panels[(split, condition)] = (points, arrays[f"{split}.labels"][shown[split]])
                bar.update(len(shown[split]))
    figure = draw_grid(panels, [str(name) for name in arrays["class_names"]],
                       f"{method} (seed {model_seed}): UMAP of the normalized embeddings, "
                       f"fit on {len(fitted)} clean training images, {neighbours} neighbours")
    save_figure(figure, paths.umap_figure(method))
    print(f"umap_plot@{method}: {time.perf_counter() - started:.1f} s -> {paths.umap_figure(method)}")


if __name__ == "__main__":
    run_stage(main)
