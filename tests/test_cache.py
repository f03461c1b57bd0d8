"""The one cache folder: `.cache/` of the working directory, or the folder $ROBUST_CIFAR_CACHE names."""
import json
from pathlib import Path

import pytest

from robust_cifar.cache import ENV, cache_dir, ensure_cache, project_cache_dir
from robust_cifar.errors import UserError
from robust_cifar.stage import record_time
from tests.methods import HEAD


def test_the_cache_is_dot_cache_unless_the_environment_names_another(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert cache_dir("timing") == Path(".cache/timing")
    monkeypatch.setenv(ENV, str(tmp_path / "shared"))
    assert cache_dir("timing") == tmp_path / "shared" / "timing"


def test_stage_timings_go_to_the_cache_named_at_run_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV, str(tmp_path / "elsewhere"))
    record_time(f"train-{HEAD}-0", 12.34)
    [written] = (tmp_path / "elsewhere" / "timing").glob(f"*/train-{HEAD}-0.json")   # under this project's folder
    assert json.loads(written.read_text())["seconds"] == 12.3
    assert not (tmp_path / ".cache").exists()


def test_clones_sharing_a_cache_keep_their_runs_apart(tmp_path, monkeypatch):
    """Two clones training the same run at once once wrote one live log between them (and DVC recorded it)."""
    monkeypatch.setenv(ENV, str(tmp_path / "shared"))
    folders = []
    for clone in ("one", "two"):
        (tmp_path / clone).mkdir()
        monkeypatch.chdir(tmp_path / clone)
        folders.append(project_cache_dir("live"))
        assert cache_dir("downloads") == tmp_path / "shared" / "downloads"   # an archive is shared
    assert folders[0] != folders[1] and all(folder.is_relative_to(tmp_path / "shared" / "live") for folder in folders)
    monkeypatch.delenv(ENV)
    assert project_cache_dir("live") == Path(".cache/live")   # the project's own cache is its alone


@pytest.mark.parametrize("named", [True, False])
def test_a_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch, named):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / ("elsewhere" if named else ".cache")
    blocker.write_text("not a folder")
    if named:
        monkeypatch.setenv(ENV, str(blocker))
    else:
        monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(UserError, match="is a file, not a folder: move the file away") as refused:
        project_cache_dir("live")
    assert "\n" not in str(refused.value)
    record_time("train-x-0", 1.0)   # a finished stage's timing never fails it


def test_a_cache_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    """/proc takes no new folder, even from root: the training once died in dvclive's makedirs, a traceback."""
    monkeypatch.setenv(ENV, "/proc/robust-cifar-cache")
    with pytest.raises(UserError, match=r"\$ROBUST_CIFAR_CACHE = /proc/robust-cifar-cache cannot be made .*: point "):
        ensure_cache()
    monkeypatch.setenv(ENV, str(tmp_path / "new" / "cache"))
    ensure_cache()
    assert not (tmp_path / "new").exists()   # it could be made: what was made to find out is gone again


def test_a_cache_that_cannot_be_written_is_one_line(monkeypatch):
    """An existing cache on a read-only disk passed check_params; the training then failed in dvclive, a traceback
    (after DVC had removed its outputs). /proc takes no file, even from root."""
    monkeypatch.setenv(ENV, "/proc")
    with pytest.raises(UserError, match=r"\$ROBUST_CIFAR_CACHE = /proc cannot be written .*: point ") as refused:
        ensure_cache()
    assert "\n" not in str(refused.value)
