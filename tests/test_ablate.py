"""tools.ablate: the reference method trained under alternative settings, on an archive's images."""
import copy
import errno
import json
from pathlib import Path

import numpy as np
import pytest

from robust_cifar.data.arrays import CifarArrays
from robust_cifar.errors import DiskFullError, UserError
from robust_cifar.params import set_dotted
from tests.pipeline_project import PARAMS, TINY_PARAMS
from tools import ablate


def tiny_raw() -> dict:
    raw = copy.deepcopy(PARAMS)
    for key, value in TINY_PARAMS.items():
        set_dotted(raw, key, value)
    set_dotted(raw, "train.epochs", 1)
    return raw


def test_a_variant_trains_from_the_first_training_seed():
    """`seeds.train` is a list: the tool once read it as one seed, and every variant failed."""
    generator = np.random.default_rng(0)
    images = lambda n: generator.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)  # noqa: E731
    labels = lambda n: np.arange(n) % 10  # noqa: E731
    arrays = CifarArrays(images(100), labels(100), images(20), labels(20), tuple(f"c{k}" for k in range(10)))
    result = ablate.run_variant(ablate.VARIANTS[0], tiny_raw(), arrays, None)
    assert result["variant"] == "defaults" and result["epochs"] == 1 and 0 <= result["test_acc"] <= 1


@pytest.mark.parametrize("setting, words", [("foo", "override 'foo' is not key=value"),
                                            ("knn.k=0", "`knn.k` = 0 is invalid")])
def test_a_bad_setting_is_one_line_before_the_archive_is_read(setting, words):
    with pytest.raises(UserError, match=words) as refused:
        ablate.main(["--archive", "not-read.tar.gz", "--set", setting])
    assert "\n" not in str(refused.value)


def test_an_out_that_is_a_folder_or_no_variant_is_refused_before_training(tmp_path, capsys):
    """Both once trained (a variant, or nothing at all and exit 0) before failing or saying nothing."""
    with pytest.raises(UserError, match="is a folder; name a new .json file"):
        ablate.main(["--archive", "not-read.tar.gz", "--out", str(tmp_path)])
    (tmp_path / "table.md").write_text("a report of another tool")
    with pytest.raises(UserError, match="table.md: exists and is no earlier .json report of this tool"):
        ablate.main(["--archive", "not-read.tar.gz", "--out", str(tmp_path / "table.md")])
    with pytest.raises(SystemExit) as exit_info:
        ablate.main(["--archive", "not-read.tar.gz", "--variants"])
    assert exit_info.value.code == 2 and "--variants: name at least one" in capsys.readouterr().err


def test_a_full_disk_while_the_results_are_written_is_one_line_and_the_last_whole_file_stays(tmp_path, monkeypatch):
    """The file was rewritten in place after each variant: a full disk left it empty, after a traceback."""
    out = tmp_path / "ablation.json"
    monkeypatch.setattr(ablate, "read_archive", lambda archive, md5: None)
    monkeypatch.setattr(ablate, "run_variant", lambda variant, *rest: {"variant": variant.name})
    real, writes = Path.write_text, []

    def second_write_fills_the_disk(self, text, *args, **kwargs):
        writes.append(self)
        if len(writes) == 2:
            real(self, text[:5])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", second_write_fills_the_disk)
    first, second = (variant.name for variant in ablate.VARIANTS[:2])
    with pytest.raises(DiskFullError, match=rf"^no space left on the disk holding {tmp_path} while writing ablation.json"):
        ablate.main(["--archive", "not-read.tar.gz", "--variants", first, second, "--out", str(out)])
    assert json.loads(out.read_text())["results"] == [{"variant": first}]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ablation.json"]


def test_an_out_over_a_json_file_that_is_no_earlier_report_is_refused_and_an_earlier_report_is_not(tmp_path):
    """A published run's metrics.json (the README's numbers) was replaced by the ablation's table."""
    published = tmp_path / "metrics.json"
    published.write_text('{"baseline": {"clean": 0.5}}')
    with pytest.raises(UserError, match=rf"--out {published}: exists and is no earlier .json report of this tool"):
        ablate.main(["--archive", "not-read.tar.gz", "--out", str(published)])
    earlier = tmp_path / "ablation.json"
    earlier.write_text(json.dumps({"common_changes": {}, "results": []}))
    with pytest.raises(UserError, match="CIFAR-10 archive not found: not-read.tar.gz"):   # accepted: on to the archive
        ablate.main(["--archive", "not-read.tar.gz", "--out", str(earlier)])
