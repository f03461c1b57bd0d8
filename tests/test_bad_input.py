"""Bad input never costs work or outputs: a careless or unlucky user gets one line naming the problem
and the fix, before any output is removed, and nothing already produced is lost."""
from __future__ import annotations

import errno
import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robust_cifar.errors import DiskFullError, InputError, UserError
from robust_cifar.npz import save_npz
from robust_cifar.outputs import OUTPUT_FOLDERS
from robust_cifar.params import set_dotted
from robust_cifar.training.methods.registry import REFERENCE_METHOD

from stages.check_params import main as check_params_stage
from tests.forked_runs import run_module
from tests.methods import ANGULAR, HEAD, PERTURBED_HEAD
from tests.pipeline_project import ROOT, communicate_or_show_where, dvc, dvc_env, stale_stages


@pytest.fixture
def project(reproduced_project, tmp_path) -> Path:
    return Path(shutil.copytree(reproduced_project, tmp_path / "project", symlinks=True))


def snapshot(project: Path) -> dict[str, str]:
    return {str(path.relative_to(project)): hashlib.md5(path.read_bytes()).hexdigest()
            for folder in OUTPUT_FOLDERS for path in sorted((project / folder).rglob("*")) if path.is_file()}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# One value any rule refuses (the rules themselves are unit-tested in tests/test_params.py), then what
# only the machine running the stages can refuse, and before this check did so only after DVC had
# deleted the download's or the trainings' outputs.
BAD_PARAMS = [
    ("knn.k", 0, "`knn.k` = 0 is invalid"),
    ("compute.device", "cuda:99", "compute.device = 'cuda:99'"),
    ("data.archive", "missing.tar.gz", "CIFAR-10 archive not found: missing.tar.gz"),
    ("data.archive_md5", "0123456789abcdef0123456789abcdef", "but 0123456789abcdef0123456789abcdef was expected"),
    ("data.archive", "dvc.yaml", "md5 of dvc.yaml is"),   # a file, but not the archive its md5 names
    # the archive is no DVC dep: without its md5 another file under its name changed nothing DVC saw
    ("data.archive_md5", "", "has no `data.archive_md5`: DVC knows a local archive only by that param"),
]


# Under DVC, one of each path through check_params (its rules; the local archive, which it checks against dvc.lock):
# what runs before it is the same for every value, so the other values are refused in-process (the test below)
UNDER_DVC = [case for case in BAD_PARAMS if case[:2] in {("knn.k", 0), ("data.archive", "missing.tar.gz")}]


def with_param(project: Path, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    set_dotted(params, key, value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("key, value, words", UNDER_DVC, ids=[key for key, *_ in UNDER_DVC])
def test_a_bad_param_is_refused_before_dvc_removes_any_output(project, key, value, words):
    before = snapshot(project)
    with_param(project, key, value)
    result = dvc(project, "repro", check=False)
    assert result.returncode != 0
    assert words in result.stderr + result.stdout, result.stderr
    assert "Running stage 'check_params'" in result.stdout
    assert result.stdout.count("Running stage") == 1, result.stdout   # nothing after the check ran
    after = snapshot(project)
    assert {path: digest for path, digest in after.items() if path != "data/params/checked.txt"} == {
        path: digest for path, digest in before.items() if path != "data/params/checked.txt"}


def test_the_check_params_stage_refuses_every_bad_param_and_writes_nothing(project, monkeypatch):
    """The stage DVC runs first (the test above), called in this process on each value of BAD_PARAMS in turn."""
    original = (project / "params.yaml").read_text()
    before = snapshot(project)
    monkeypatch.chdir(project)
    for key, value, words in BAD_PARAMS:
        with_param(project, key, value)
        with pytest.raises(UserError) as refused:
            check_params_stage([])
        assert words in str(refused.value), (key, value)
        assert snapshot(project) == before, (key, value)
        (project / "params.yaml").write_text(original)


def test_exp_run_with_a_bad_value_keeps_every_model(project):
    before = snapshot(project)
    result = dvc(project, "exp", "run", "-S", "train.epochs=1e0", check=False)
    assert result.returncode != 0 and "`train.epochs` = 1.0 is invalid" in result.stderr + result.stdout
    assert all((project / f"models/{method}-0.pt").is_file() for method in (HEAD, ANGULAR))
    assert {path: digest for path, digest in snapshot(project).items() if path.startswith("models/")} == {
        path: digest for path, digest in before.items() if path.startswith("models/")}


def test_a_refused_exp_run_with_dvc_yaml_as_target_deletes_no_recorded_output(project):
    """`dvc exp run` without a target checks the workspace out for the new params first and deletes
    the outputs DVC recorded (its per-clone link state) of stages those params drop, before
    check_params runs; with dvc.yaml as the target (README, preset, sweep) it deletes nothing."""
    dvc(project, "commit", "--force")   # DVC records every output as its own (as after a run in this clone)
    params = (project / "params.yaml").read_bytes()
    before = snapshot(project)

    def refused(*target: str) -> set[str]:
        (project / "params.yaml").write_bytes(params)
        result = dvc(project, "exp", "run", "-S", "methods=[foo]", *target, check=False)
        assert result.returncode != 0 and "foo" in result.stderr + result.stdout
        return set(before) - set(snapshot(project)) - {"data/params/checked.txt"}

    assert refused("dvc.yaml") == set()
    assert refused() != set()   # the hazard the target avoids (DVC 3.67.1), so this test can see it


def test_a_bad_value_under_repro_s_names_the_outputs_dvc_removed_and_checkout_restores_them(project):
    """`dvc repro -s` (and `--downstream`) skips check_params: DVC removes the stage's outputs, then the stage
    refuses the value. It cannot keep them, so it says so, and what it advises puts them back."""
    model = project / f"models/{ANGULAR}-0.pt"
    recorded = model.read_bytes()
    with_param(project, f"{ANGULAR}.alpha", 400)
    result = dvc(project, "repro", "-s", f"train@{ANGULAR}-0", check=False)
    assert result.returncode != 0 and "Running stage 'check_params'" not in result.stdout
    line = one_error_line(result.stderr)
    assert f"`{ANGULAR}.alpha` = 400 is invalid" in line and not model.exists()
    assert f"DVC removed the outputs of train@{ANGULAR}-0 before running it" in line, line
    dvc(project, *line.split("`")[-2].split()[1:])   # the advice, as written
    assert model.read_bytes() == recorded


def test_a_clone_without_the_local_archive_varies_what_does_not_reread_it(project):
    """A colleague who cloned and pulled a run made from a local archive lacks the archive: check_params needs it only
    where the download stage reruns, as DVC decides (here its code edited), and refuses then, before DVC removes
    anything."""
    archive = project / yaml.safe_load((project / "params.yaml").read_text())["data"]["archive"]
    archive.rename(project / "elsewhere.tar.gz")
    set_umap = yaml.safe_load((project / "params.yaml").read_text())
    set_umap["umap"]["min_dist"] += 0.1   # reruns the UMAP figures alone
    (project / "params.yaml").write_text(yaml.safe_dump(set_umap, sort_keys=False))
    varied = dvc(project, "repro", "check_params")
    said = varied.stderr + varied.stdout
    assert f"note: the local archive {archive.name} (`data.archive`) is not here, and nothing needs it" in said, said
    assert stale_stages(project, "download") == set()
    download = project / "robust_cifar/data/download.py"
    download.write_text(download.read_text() + "# edited\n")
    assert stale_stages(project, "download") == {"download"}
    before = snapshot(project)
    refused = dvc(project, "repro", check=False)
    assert refused.returncode != 0 and f"CIFAR-10 archive not found: {archive.name}" in one_error_line(refused.stderr)
    assert refused.stdout.count("Running stage") == 1 and snapshot(project).keys() == before.keys()


def stage(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m <args>` in the project, forked from a process that has imported torch (tests/forked_runs.py):
    these runs refuse before any work, and a fresh interpreter would spend most of its time importing."""
    return run_module(project, *args, env=dvc_env(), timeout=timeout)


def test_a_forked_run_reads_as_a_python_m_run(project):
    """What `stage` runs, a refusal and a run that writes, has the exit code, output and files of `python -m`; so
    has DVC forked (from a server that has imported its commands), here saying what the damaged input makes stale."""
    raw_of_another_archive(project)
    for command, output in [(("dvc", "status"), None), (("stages.embed", HEAD, "0"), None),
                            (("stages.aggregate", HEAD), project / f"reports/aggregate/{HEAD}.json")]:
        real = subprocess.run([sys.executable, "-m", *command], cwd=project, env=dvc_env(), capture_output=True,
                              text=True, timeout=120)
        written = output and output.read_bytes()
        if output:
            output.unlink()
        forked = stage(project, *command)
        assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)
        assert output is None or output.read_bytes() == written
    assert real.returncode == 0 and HEAD in real.stdout   # the run that writes


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def raw_of_another_archive(project: Path) -> None:
    """Another archive's raw file in place of the one the split was drawn from: its indices are in range."""
    path = project / "data/raw/cifar10.npz"
    arrays = dict(np.load(path))
    save_npz(path, {**arrays, "train_labels": np.roll(arrays["train_labels"], 1)})


def other_images(project: Path) -> None:
    path = project / "data/raw/cifar10.npz"
    arrays = dict(np.load(path))
    save_npz(path, {**arrays, "test_images": 255 - arrays["test_images"]})


def validate_on_train(project: Path) -> None:
    path = project / "data/split/indices.npz"
    indices = dict(np.load(path))
    save_npz(path, {**indices, "val": indices["train"]})


DAMAGE = [
    ("truncated model", lambda p: truncate(p / f"models/{HEAD}-0.pt"), ("stages.embed", HEAD, "0"),
     f"models/{HEAD}-0.pt is not a readable checkpoint", f"dvc repro -f -s train@{HEAD}-0"),
    ("model without config", lambda p: torch.save({"state_dict": {}}, p / f"models/{ANGULAR}-0.pt"),
     ("stages.embed", ANGULAR, "0"), "is not a checkpoint of this project", f"dvc repro -f -s train@{ANGULAR}-0"),
    ("truncated embeddings", lambda p: truncate(p / f"data/embeddings/{ANGULAR}-0.npz"), ("stages.evaluate", ANGULAR, "0"),
     f"data/embeddings/{ANGULAR}-0.npz is not a readable .npz", f"dvc repro -f -s embed@{ANGULAR}-0"),
    ("empty split", lambda p: (p / "data/split/indices.npz").write_bytes(b""), ("stages.train", HEAD, "0"),
     "data/split/indices.npz is not a readable .npz", "dvc repro -f -s split"),
    ("random plan", lambda p: (p / "data/perturb/plan.npz").write_bytes(bytes(range(256)) * 40),
     ("stages.embed", HEAD, "0"), "data/perturb/plan.npz is not a readable .npz", "dvc repro -f -s perturb"),
    ("missing metrics", lambda p: (p / f"reports/aggregate/{PERTURBED_HEAD}.json").unlink(), ("stages.summarize",),
     f"reports/aggregate/{PERTURBED_HEAD}.json not found", f"dvc repro -f -s aggregate@{PERTURBED_HEAD}"),
    ("truncated seed metrics", lambda p: truncate(p / f"reports/seeds/{ANGULAR}/0.json"), ("stages.aggregate", ANGULAR),
     f"reports/seeds/{ANGULAR}/0.json is not valid JSON", f"dvc repro -f -s evaluate@{ANGULAR}-0"),
    ("garbled predictions", lambda p: (p / f"reports/seeds/{HEAD}/0.csv").write_text("a,b\n1,2\n"), ("stages.aggregate", HEAD),
     f"reports/seeds/{HEAD}/0.csv is not the predictions table that 0.json beside it records",
     f"dvc repro -f -s evaluate@{HEAD}-0"),
    ("a split whose validation is the training set", validate_on_train, ("stages.train", HEAD, "0"),
     "data/split/indices.npz does not hold what split writes (train and val share", "dvc repro -f -s split"),
    ("raw data of another archive", raw_of_another_archive, ("stages.embed", HEAD, "0"),
     "data/split/indices.npz was drawn from other data than data/raw/cifar10.npz holds now: put both back",
     "`dvc checkout --force data/raw/cifar10.npz data/split/indices.npz`"),
    ("other images, the same labels", other_images, ("stages.embed", HEAD, "0"),
     "data/split/indices.npz was drawn from other data than data/raw/cifar10.npz", "dvc repro -f -s split"),
]


@pytest.mark.parametrize("name, damage, command, words, fix", DAMAGE, ids=[name for name, *_ in DAMAGE])
def test_a_damaged_input_is_one_line_naming_the_file_and_the_fix(project, name, damage, command, words, fix):
    damage(project)
    result = stage(project, *command)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert words in line and fix in line, line
    assert "weights_only=False" not in result.stderr


def test_a_folder_that_cannot_be_written_is_refused_before_training(project):
    shutil.rmtree(project / "models")
    (project / "models").write_text("a file where the models folder should be")
    started = time.perf_counter()
    result = stage(project, "stages.train", HEAD, "0")
    assert result.returncode == 2
    assert f"cannot write models/{HEAD}-0.pt" in one_error_line(result.stderr)
    assert f"train@{HEAD}-0:" not in result.stdout   # refused before the data was even loaded
    assert time.perf_counter() - started < 60


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # as `dvc exp run` starts its stages


@pytest.mark.parametrize("signum, inherited_ignore", [(signal.SIGINT, False), (signal.SIGINT, True),
                                                      (signal.SIGTERM, False), (signal.SIGHUP, False)],
                         ids=["ctrl-c", "ctrl-c-under-exp-run", "term", "hup"])
def test_a_stopped_stage_is_one_line_exit_128_plus_signal_and_writes_nothing(project, signum, inherited_ignore):
    with_param(project, "train.epochs", 5000)   # long enough to be interrupted mid-training
    model = project / f"models/{HEAD}-0.pt"
    before, log_before = model.read_bytes(), snapshot(project)
    process = subprocess.Popen([sys.executable, "-m", "stages.train", HEAD, "0"], cwd=project,
                               env={**dvc_env(), "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint if inherited_ignore else None)
    assert process.stdout.readline().startswith(f"train@{HEAD}-0:")   # printed once training starts
    time.sleep(1.0)
    process.send_signal(signum)
    _, stderr = communicate_or_show_where(process, timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"interrupted ({signal.Signals(signum).name}): ")
    assert model.read_bytes() == before
    assert snapshot(project) == log_before   # the training log of the finished run too
    assert not list(project.rglob("*.part*"))


# --- a full disk: one line, no partial file (simulated: the stage code sees what a full disk raises) ----------------

def test_a_full_disk_while_writing_is_one_line_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "embeddings" / "run.npz"

    def full_disk_write(member, array, allow_pickle):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np.lib.format, "write_array", full_disk_write)
        with pytest.raises(DiskFullError, match=r"^no space left on the disk holding .*embeddings while writing "
                                                r"run.npz .*the partial file was removed\): free some space"):
            save_npz(target, {"a": np.zeros(3)})
    assert list(target.parent.iterdir()) == []


def test_torch_saves_full_disk_error_is_named_as_one(tmp_path, monkeypatch):
    from robust_cifar import outputs
    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 0)
    with pytest.raises(DiskFullError, match="no space left"):
        with outputs.atomic_path(tmp_path / "model.pt") as partial:
            partial.write_bytes(b"half a checkpoint")
            raise RuntimeError("basic_ios::clear: iostream error")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 10**12)   # plenty of space: not the disk's fault
    with pytest.raises(RuntimeError, match="iostream"):
        with outputs.atomic_path(tmp_path / "model.pt"):
            raise RuntimeError("basic_ios::clear: iostream error")


def test_a_training_whose_checkpoint_cannot_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    from robust_cifar import outputs
    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 5 * 2**20)
    with pytest.raises(DiskFullError, match=r"models/x.pt needs about 40 MiB but the disk holding .* has 5 MiB free"):
        outputs.check_free_space(tmp_path / "models/x.pt", 40 * 2**20)


def test_a_shortfall_under_a_mib_never_reads_as_the_same_number(tmp_path, monkeypatch):
    from robust_cifar import outputs
    monkeypatch.setattr(outputs, "free_bytes", lambda folder: int(1.3 * 2**20))
    with pytest.raises(DiskFullError, match=r"needs about 2 MiB but the disk holding .* has 1 MiB free"):
        outputs.check_free_space(tmp_path / "models/x.pt", int(1.5 * 2**20))


def cross_device(monkeypatch, source_folder: Path) -> None:
    """Path.replace from `source_folder` fails as a rename across filesystems does (a cache on a scratch disk)."""
    real = Path.replace

    def replace(self, target):
        if source_folder in Path(self).parents or Path(self) == source_folder:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(self))
        return real(self, target)
    monkeypatch.setattr(Path, "replace", replace)


def test_a_finished_training_log_moves_into_place_from_a_cache_on_another_disk(tmp_path, monkeypatch):
    from robust_cifar import outputs
    source, destination = tmp_path / "cache/live/run-0", tmp_path / "reports/training/run-0"
    (source / "plots").mkdir(parents=True)
    (source / "plots/loss.tsv").write_text("step\tloss\n0\t1.0\n")
    (destination / "plots").mkdir(parents=True)
    (destination / "plots/stale.tsv").write_text("an earlier run's\n")
    cross_device(monkeypatch, tmp_path / "cache")
    outputs.move_folder(source, destination)
    assert sorted(str(path.relative_to(destination)) for path in destination.rglob("*")) == ["plots", "plots/loss.tsv"]
    assert not source.exists() and sorted(path.name for path in destination.parent.iterdir()) == ["run-0"]


def test_a_full_disk_while_the_log_is_copied_across_disks_is_one_line_and_leaves_no_partial_copy(tmp_path, monkeypatch):
    from robust_cifar import outputs
    source, destination = tmp_path / "cache/live/run-0", tmp_path / "reports/training/run-0"
    source.mkdir(parents=True)
    (source / "metrics.json").write_text("{}")
    cross_device(monkeypatch, tmp_path / "cache")

    def full(src, dst, **kwargs):
        Path(dst).mkdir(parents=True)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(outputs.shutil, "copytree", full)
    with pytest.raises(DiskFullError, match="no space left on the disk holding .*training while writing .run-0.part"):
        outputs.move_folder(source, destination)
    assert list(destination.parent.iterdir()) == [] and (source / "metrics.json").is_file()


def test_a_full_disk_while_training_logs_an_epoch_is_one_line_and_leaves_no_partial_log(tmp_path, monkeypatch):
    from dvclive import Live

    from robust_cifar.cache import ENV
    from robust_cifar.training.live_log import EpochLog
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    log = EpochLog(f"reports/training/{HEAD}-0")
    log({"epoch": 0, "train_loss": 1.0})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Live, "make_summary", full)
    with pytest.raises(DiskFullError, match=rf"^no space left on the disk holding .cache/live while writing {HEAD}-0 "):
        log({"epoch": 1, "train_loss": 0.5})
    assert not (tmp_path / ".cache/live" / f"{HEAD}-0").exists() and not (tmp_path / "reports").exists()


def test_a_folder_where_a_stage_writes_a_file_is_refused_before_the_work(tmp_path):
    from robust_cifar import outputs
    (tmp_path / "models/run-0.pt/x").mkdir(parents=True)
    with pytest.raises(InputError, match=r"models/run-0.pt is a folder where this stage writes a file: remove it"):
        outputs.check_writable(tmp_path / "models/run-0.pt")


def test_a_full_disk_while_downloading_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from robust_cifar.data import download

    def full(url, sink, description):
        sink.write(b"part of an archive")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(download, "_stream_to", full)
    with pytest.raises(DiskFullError, match="no space left on the disk holding .*downloads while writing cifar.tar.gz"):
        download.download("http://127.0.0.1:9/cifar.tar.gz", tmp_path / "downloads/cifar.tar.gz", "")
    assert list((tmp_path / "downloads").iterdir()) == []


def test_a_folder_that_appears_where_an_output_goes_while_the_stage_runs_is_one_line(tmp_path):
    from robust_cifar import outputs
    (tmp_path / "reports/seeds/0.json").mkdir(parents=True)   # after the stage's start checked the place
    with pytest.raises(InputError, match=r"0.json is a folder where this stage writes a file: remove it"):
        outputs.write_json(tmp_path / "reports/seeds/0.json", {})
    (tmp_path / "aggregate").write_text("a file where a folder goes")
    with pytest.raises(InputError, match=r"aggregate is a file, not a folder"):
        outputs.write_json(tmp_path / "aggregate/run.json", {})
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["0.json", "aggregate", "reports", "seeds"]


def test_the_light_stages_refuse_a_folder_where_an_output_goes_before_their_work(project):
    """evaluate, aggregate, summarize and examples write each output at their end: a folder standing there was a
    traceback after the work (and summarize had rewritten its text before its figures failed)."""
    for command, output in [(("stages.evaluate", HEAD, "0"), f"reports/seeds/{HEAD}/0.csv"),
                            (("stages.aggregate", HEAD), f"reports/aggregate/{HEAD}.json"),
                            (("stages.summarize",), "reports/robustness_curve.png"),
                            (("stages.examples",), "reports/examples.png")]:
        (project / output).unlink()
        (project / output).mkdir()
        before = snapshot(project)
        result = stage(project, *command)
        assert result.returncode == 2 and f"{output} is a folder where this stage writes a file" in one_error_line(
            result.stderr), result.stderr
        assert snapshot(project) == before, command


def test_the_examples_stage_refuses_another_runs_model_under_the_figures_runs_name(project):
    shutil.copyfile(project / f"models/{ANGULAR}-0.pt", project / f"models/{REFERENCE_METHOD}-0.pt")
    result = stage(project, "stages.examples")
    assert result.returncode == 2
    assert f"holds the model of {ANGULAR}-0 (its metadata), not of {REFERENCE_METHOD}-0" in one_error_line(
        result.stderr)


def test_an_output_folder_linked_elsewhere_is_refused_before_any_stage(tmp_path):
    """DVC saves an output that resolves outside the project only to refuse it, after the training; check_params
    refuses the link first. Files DVC links to its cache (cache.type symlink) are fine."""
    from robust_cifar.check_params import refuse_linked_output_folders
    bigger_disk = tmp_path / "elsewhere"
    (bigger_disk / "umap").mkdir(parents=True)
    project = tmp_path / "project"
    (project / "reports").mkdir(parents=True)
    (project / "reports/summary.md").symlink_to(bigger_disk / "summary.md")   # as DVC links a cached file
    refuse_linked_output_folders(project)
    (project / "reports/umap").symlink_to(bigger_disk / "umap")
    with pytest.raises(UserError, match=r"reports/umap is a link \(to .*elsewhere/umap\): DVC refuses an output"):
        refuse_linked_output_folders(project)
    (project / "reports/umap").unlink()
    (project / "models").symlink_to(bigger_disk)
    with pytest.raises(UserError, match=r"models is a link"):
        refuse_linked_output_folders(project)


def test_a_stage_refuses_an_output_in_a_linked_folder_before_its_work(tmp_path, monkeypatch):
    """`dvc repro -f -s train@<run>` skips check_params: a linked log folder passed the train stage's start check,
    and the training ended in a NotADirectoryError traceback."""
    from robust_cifar.outputs import check_writable
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    Path("reports/training").mkdir(parents=True)
    Path("reports/training/run-0").symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"^reports/training/run-0 is a link \(to .*elsewhere\): DVC refuses"):
        check_writable(Path("models/run-0.pt"), Path("reports/training/run-0"))
    Path("reports/training/run-0").unlink()
    Path("models").rmdir()   # made by the check of the first path
    Path("models").symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"^models is a link"):
        check_writable(Path("models/run-0.pt"), Path("reports/training/run-0"))
    Path("models").unlink()
    Path("models").mkdir()
    Path("models/run-0.pt").symlink_to(elsewhere / "cached")   # as DVC links a cached file
    check_writable(Path("models/run-0.pt"), Path("reports/training/run-0"))
    check_writable(elsewhere / "report.md", files=True)   # a tool's destination may lie anywhere


@pytest.mark.parametrize("stage, args", [("summarize", []), ("train", [HEAD, "0"])])
def test_help_says_what_a_stage_does_and_runs_nothing(tmp_path, stage, args):
    """`python -m stages.summarize --help` ran the stage and replaced its outputs."""
    result = run_module(tmp_path, f"stages.{stage}", *args, "--help", env={**dvc_env(), "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stdout.startswith(f"{stage}"), result.stdout + result.stderr
    assert "run it with `dvc repro`" in result.stdout and not list(tmp_path.iterdir())   # no cache, no output


def test_a_stage_of_the_whole_pipeline_refuses_arguments(tmp_path):
    result = run_module(tmp_path, "stages.curves", "foo", "bar", env={**dvc_env(), "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert one_error_line(result.stderr) == ("error: this stage takes no arguments, got foo bar: run it through dvc "
                                             "(`dvc repro <stage>`); `--help` says what it does")


def test_outputs_written_together_are_all_new_or_all_as_they_were(tmp_path):
    """summarize on a disk that filled at its last figure left the new summary beside the old figures."""
    from robust_cifar import outputs
    summary, figure = tmp_path / "summary.md", tmp_path / "accuracy.png"
    summary.write_text("old")
    figure.write_text("old")
    with pytest.raises(DiskFullError):
        with outputs.written_together():
            outputs.write_text(summary, "new")
            assert summary.read_text() == "old"   # held back until the block ends
            with outputs.atomic_path(figure) as partial:
                partial.write_text("half a figure")
                raise OSError(errno.ENOSPC, "No space left on device")
    assert summary.read_text() == figure.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["accuracy.png", "summary.md"]   # no partial left
    with outputs.written_together():
        outputs.write_text(summary, "new")
        outputs.write_text(figure, "new")
    assert summary.read_text() == figure.read_text() == "new"
