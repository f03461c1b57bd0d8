"""check_params removes the outputs of methods and seeds params.yaml no longer lists, which DVC leaves in place
(a dropped method's files were drawn and published beside the run's; a dropped seed's reports stayed in the
folders each aggregate depends on, so a clone's `dvc status` was never clean)."""
import hashlib
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from robust_cifar.check_params import remove_stale_outputs, stale_outputs
from robust_cifar.params import Params, parse_yaml
from tests.methods import ANGULAR, HEAD
from tests.test_params import PARAMS

ROOT = Path(__file__).resolve().parent.parent
STAGES = parse_yaml((ROOT / "dvc.yaml").read_text())["stages"]

LISTED = [f"models/{HEAD}-0.pt", f"reports/training/{HEAD}-0/metrics.json", f"data/embeddings/{HEAD}-0.npz",
          f"reports/seeds/{HEAD}/0.json", f"reports/robustness/{HEAD}/0.csv", f"reports/aggregate/{HEAD}.json",
          f"reports/umap/{HEAD}.png", f"reports/predictions/{HEAD}.csv",
          "models/notes.txt", "models/mine-0.ckpt", "reports/summary.md", "data/split/indices.npz"]   # no run's
DROPPED_SEED = [f"models/{HEAD}-1.pt", f"reports/training/{HEAD}-1", f"data/embeddings/{HEAD}-1.npz",
                f"reports/seeds/{HEAD}/1.json", f"reports/seeds/{HEAD}/1.csv", f"reports/robustness/{HEAD}/1.json"]
USERS = [f"reports/umap/{HEAD}_before.png", f"models/{HEAD}-9.pt"]   # named like outputs, never DVC's: kept
DROPPED_METHOD = [f"models/{ANGULAR}-0.pt", f"reports/training/{ANGULAR}-0", f"reports/seeds/{ANGULAR}/0.json",
                  f"reports/aggregate/{ANGULAR}.json", f"reports/umap/{ANGULAR}.png",
                  f"reports/predictions/{ANGULAR}.csv"]


def make(root: Path, files: list[str]) -> None:
    for name in files:
        path = root / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"the content of {name}\n")
        else:   # a training log: a folder
            (path / "plots").mkdir(parents=True)
            (path / "plots" / "lr.tsv").write_text(f"step\tlr\n0\t0.1\n# {name}\n")


def test_the_outputs_of_a_dropped_method_or_seed_are_found_and_nothing_else(tmp_path):
    make(tmp_path, LISTED + DROPPED_SEED + DROPPED_METHOD)
    found = stale_outputs(STAGES, [HEAD], [0], root=tmp_path)
    assert sorted(str(path.relative_to(tmp_path)) for path in found) == sorted(DROPPED_SEED + DROPPED_METHOD)
    assert stale_outputs(STAGES, [HEAD, ANGULAR], [0, 1], root=tmp_path) == []


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A DVC project (no git) with the run's, a dropped seed's and a dropped method's outputs, each recorded in
    dvc.lock and in DVC's cache but one (the cache cleaned since), and the user's own files, named like outputs and
    with bytes DVC's cache holds (a copy), but never recorded."""
    Repo.init(str(tmp_path), no_scm=True).close()
    make(tmp_path, LISTED + DROPPED_SEED + DROPPED_METHOD + USERS)
    recorded = [{"path": name} for name in LISTED + DROPPED_SEED + DROPPED_METHOD]
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"a@b-0": {"outs": recorded}}}))
    outside = tmp_path / DROPPED_METHOD[0]
    with Repo(str(tmp_path)) as repo:
        for path in (each for each in tmp_path.rglob("*") if each.is_file() and ".dvc" not in each.parts):
            if path != outside:
                cached = Path(repo.cache.local.oid_to_path(hashlib.md5(path.read_bytes()).hexdigest()))
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_params_removes_what_dvcs_cache_holds_and_keeps_what_it_does_not(project, capsys):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["methods"], raw["seeds"]["train"], raw["seeds"]["figures"] = [HEAD], [0], 0
    remove_stale_outputs(Params(raw), dvc_yaml=ROOT / "dvc.yaml", lock=project / "dvc.lock")
    left = {str(path.relative_to(project)) for path in project.rglob("*") if ".dvc" not in path.parts}
    assert set(LISTED + USERS) <= left and DROPPED_METHOD[0] in left   # no longer in DVC's cache: kept
    assert not left & set(DROPPED_SEED + DROPPED_METHOD[1:])
    assert f"reports/seeds/{ANGULAR}" not in left   # its last seed gone, the method's folder too
    said = capsys.readouterr()
    assert said.out.startswith(f"removed {len(DROPPED_SEED) + len(DROPPED_METHOD) - 1} outputs of methods or seeds")
    assert said.err.startswith("warning: kept 1 output of") and DROPPED_METHOD[0] in said.err
    assert not any(name in said.out + said.err for name in USERS)
    remove_stale_outputs(Params(raw), dvc_yaml=ROOT / "dvc.yaml", lock=project / "dvc.lock")   # once removed, nothing more to say
    assert capsys.readouterr().out == ""


def test_a_recorded_output_that_is_a_link_goes_and_what_it_links_to_stays(project, tmp_path_factory):
    log = project / DROPPED_SEED[1]   # a training log, a folder: here a link to a folder elsewhere
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "log"
    log.rename(elsewhere)
    log.symlink_to(elsewhere, target_is_directory=True)
    raw = yaml.safe_load(PARAMS.read_text())
    raw["methods"], raw["seeds"]["train"], raw["seeds"]["figures"] = [HEAD], [0], 0
    remove_stale_outputs(Params(raw), dvc_yaml=ROOT / "dvc.yaml", lock=project / "dvc.lock")   # was rmtree's OSError
    assert not log.is_symlink() and not log.exists() and (elsewhere / "plots" / "lr.tsv").is_file()
