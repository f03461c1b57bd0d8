"""The dvc.yaml code-dep syncer changes exactly the .py entries of the stages whose imports moved."""
from tools.sync_code_deps import synced

DVC_YAML = """\
stages:
  train:   # a comment
    cmd: python -m stages.train
    deps:
      - data/raw.npz   # data first
      - robust_cifar/old.py
      - stages/train.py
    params:
      - train
  umap:
    foreach: ${methods}
    do:
      cmd: python -m stages.umap ${item}
      deps:
        - data/${item}.npz
        - stages/umap.py
      outs:
        - reports/${item}.png
"""


def test_a_moved_import_rewrites_only_that_stages_code_deps():
    text, changed = synced(DVC_YAML, {"train": ["robust_cifar/new.py", "stages/train.py"], "umap": ["stages/umap.py"]})
    assert changed == ["train"]
    assert text == DVC_YAML.replace("robust_cifar/old.py", "robust_cifar/new.py")


def test_deps_under_a_foreach_are_synced_and_data_deps_kept():
    text, changed = synced(DVC_YAML, {"train": ["robust_cifar/old.py", "stages/train.py"],
                                      "umap": ["robust_cifar/reporting/colours.py", "stages/umap.py"]})
    assert changed == ["umap"]
    assert "        - data/${item}.npz\n        - robust_cifar/reporting/colours.py\n        - stages/umap.py\n      outs:" in text
    assert text.count("data/raw.npz   # data first") == 1

