"""The one cache folder: `.cache/` of the working directory, or the folder $ROBUST_CIFAR_CACHE names."""
import json
from pathlib import Path

from robust_cifar.cache import ENV, cache_dir
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
    assert json.loads((tmp_path / "elsewhere" / "timing" / f"train-{HEAD}-0.json").read_text())["seconds"] == 12.3
    assert not (tmp_path / ".cache").exists()
