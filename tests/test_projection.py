import errno
import os
import sys

import numpy as np
import pytest

from robust_cifar.errors import DiskFullError, UserError
from robust_cifar.reporting.umap_plot import draw_grid, import_umap_with_compile_cache, neighbours_used, sample_indices


def test_grid_has_a_panel_per_split_and_condition_with_every_class_in_the_legend():
    rng = np.random.default_rng(0)
    labels = np.arange(30) % 3
    panels = {(split, condition): (rng.normal(size=(30, 2)), labels)
              for split in ("train", "val", "test") for condition in ("clean", "perturbed")}
    figure = draw_grid(panels, ["cat", "dog", "ship"], "title")
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == [f"{split}, {condition} (30 points)" for split in ("train", "val", "test")
                      for condition in ("clean", "perturbed")]
    legend_names = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend_names == ["cat", "dog", "ship"]


def test_sample_indices_caps_and_keeps_all_when_asked():
    rng = np.random.default_rng(0)
    assert np.array_equal(sample_indices(10, 0, rng), np.arange(10))
    assert np.array_equal(sample_indices(10, 50, rng), np.arange(10))
    chosen = sample_indices(100, 7, rng)
    assert len(chosen) == 7 and len(set(chosen)) == 7 and np.all(np.diff(chosen) > 0)


def test_umap_uses_every_other_point_as_a_neighbour_when_asked_for_more():
    """umap.n_neighbors = 200 on 40 fitted points ran with 39, unsaid: the stage now says so, and the title names it."""
    assert neighbours_used(15, 40) == 15 and neighbours_used(200, 40) == 39 and neighbours_used(39, 40) == 39


@pytest.mark.parametrize("errno_, refusal", [(errno.ENOSPC, DiskFullError), (errno.EROFS, UserError)])
def test_a_compile_cache_that_takes_no_file_is_one_line(monkeypatch, tmp_path, errno_, refusal):
    """numba writes umap-learn's compiled code as umap defines it: a full disk there was a 50-line traceback."""
    import builtins

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    monkeypatch.delitem(sys.modules, "umap", raising=False)
    imported = builtins.__import__

    def full_cache(name, *args, **kwargs):
        if name == "umap":
            raise OSError(errno_, os.strerror(errno_), str(tmp_path / "numba" / "index"))
        return imported(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", full_cache)
    with pytest.raises(refusal, match=rf"cannot write umap-learn's compiled code to {tmp_path}/numba \(") as error:
        import_umap_with_compile_cache()
    assert "\n" not in str(error.value)
