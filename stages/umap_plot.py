"""umap@<method>: UMAP of the embeddings (fit on clean training embeddings), train / val / test x
clean / perturbed -> reports/umap/<method>.png"""
import time

import numpy as np

from robust_cifar.methods import METHODS
from robust_cifar.npz import load_npz
from robust_cifar.outputs import prepare, run_stage
from robust_cifar.params import load_params
from robust_cifar.projection import PANEL_CONDITIONS, draw_grid, fit_umap, sample_indices
from robust_cifar.splits import SPLITS
from stages import paths


def main(argv: list[str]) -> None:
    params = load_params()
    method = METHODS[params.method(argv[0] if argv else "")]
    config, seed = params.umap(), params.seed("umap")
    arrays = load_npz(paths.embeddings(method.name), f"embed@{method.name}")
    rng = np.random.default_rng(seed)

    started = time.perf_counter()
    train = arrays["train.clean.embeddings"]
    fitted = sample_indices(len(train), config.fit_samples, rng)
    reducer = fit_umap(train[fitted], config.n_neighbors, config.min_dist, seed)
    panels = {}
    for split in SPLITS:
        # the same images in the clean and perturbed panels, so the two can be compared point for point
        shown = sample_indices(len(arrays[f"{split}.labels"]), config.plot_samples, rng)
        for condition in PANEL_CONDITIONS:
            points = reducer.transform(arrays[f"{split}.{condition}.embeddings"][shown])
            panels[(split, condition)] = (points, arrays[f"{split}.labels"][shown])
    figure = draw_grid(panels, [str(name) for name in arrays["class_names"]],
                       f"{method.name}: UMAP of the normalized embeddings, fit on {len(fitted)} clean training images")
    figure.savefig(prepare(paths.umap_figure(method.name)), dpi=110)
    print(f"umap@{method.name}: {time.perf_counter() - started:.1f} s -> {paths.umap_figure(method.name)}")


if __name__ == "__main__":
    run_stage(main)
