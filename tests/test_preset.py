import copy
import errno
import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from robust_cifar.check_params import validate_params
from robust_cifar.errors import PublishError, UserError
from robust_cifar.machine import cpu_description
from robust_cifar.params import Params, load_params, set_dotted, with_overrides
from robust_cifar.reporting.provenance import stage_times, time_lines
from robust_cifar.reporting.summarize import BREAK_EPS
from robust_cifar.signals import STOP_SIGNALS, Stopped, stop_on_signals
from robust_cifar.training.methods.registry import REGISTRY
from tests.archives import write_official_archive
from tests.methods import ANGULAR, HEAD
from tests.test_params import PARAMS
from tools import preset, restored
from tools.preset import PRESETS, command, main, overrides, publish


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_sets_known_keys_to_valid_values(name):
    raw = yaml.safe_load(PARAMS.read_text())
    edited = copy.deepcopy(raw)
    for argument in overrides(name)[1::2]:
        key, text = argument.split("=", 1)
        assert Params(edited).has(key), f"{key} is not a params.yaml key"
        set_dotted(edited, key, yaml.safe_load(text))
    validate_params(Params(edited))   # the check_params stage would accept the experiment
    assert edited["preset"] == name
    assert len(edited["seeds"]["train"]) >= 2   # so the spread shows


def test_the_cpu_presets_train_every_method_with_the_settings_its_file_declares_for_a_cpu():
    raw = yaml.safe_load(PARAMS.read_text())
    declared = {name: module.ON_A_CPU for name, module in REGISTRY.items() if hasattr(module, "ON_A_CPU")}
    assert declared, "no method declares CPU settings: the presets would train them as the full study does"
    for name in PRESETS:
        assert "methods" not in PRESETS[name]   # every method of params.yaml
        for method, settings in declared.items():
            for key, value in settings.items():
                assert PRESETS[name][f"{method}.{key}"] == value != raw[method][key]


def test_the_cpu_preset_keeps_the_write_ups_data_and_runs_the_attacks_as_a_cascade():
    """The hour-long CPU study: the full 20% training split, the whole test set, 1,000 attacked images, 3 seeds."""
    raw = yaml.safe_load(PARAMS.read_text())
    cpu = PRESETS["cpu"]
    assert "split.train_fraction" not in cpu and raw["split"]["train_fraction"] == 0.2
    assert cpu.get("split.test_per_class", raw["split"]["test_per_class"]) == 0
    assert cpu["attack.test_images"] >= 1000 and len(cpu["seeds.train"]) >= 3 and cpu["attack.cascade"] is True
    assert cpu["attack.apgd_t.at"] == "study"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_presets_run_fgm_pgd_and_both_apgd_attacks_at_every_eps_where_the_break_gate_looks(name):
    """At 32/255 FGM and PGD alone left 2.4% of the images right on PGD-trained heads (the gate allows 2%)."""
    raw = yaml.safe_load(PARAMS.read_text())
    for attack in ("fgm", "pgd", "apgd_ce", "apgd_dlr"):
        assert PRESETS[name].get(f"attack.{attack}.at", raw["attack"][attack]["at"]) == "sweep"
    assert max(PRESETS[name]["attack.eps_255"]) >= BREAK_EPS


def test_the_command_is_one_dvc_experiment_with_the_archive(capsys):
    cmd = command("quick", "../shared/data/cifar10-jpeg.tar.gz", "26db66ca8cac19aed87bc28f0e6c6d82", "quick-cpu")
    assert cmd[1:6] == ["-m", "dvc", "exp", "run", "-n"] and cmd[6] == "quick-cpu"
    assert "data.archive='../shared/data/cifar10-jpeg.tar.gz'" in cmd and "seeds.train=[0, 1, 2]" in cmd
    assert main(["quick", "--dry-run", "--name", "x"]) == 0
    assert "dvc exp run -n x -S preset=quick" in capsys.readouterr().out


def test_an_md5_without_its_archive_is_refused_and_an_empty_archive_downloads(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quick", "--archive-md5", "0" * 32, "--dry-run"])   # it was ignored
    assert exit_info.value.code == 2 and "--archive-md5 is the md5 of --archive" in capsys.readouterr().err
    cmd = command("quick", "", None, "x", machine={})   # the download, whatever params.yaml's archive is
    assert "data.archive=''" in cmd and "data.archive_md5=''" in cmd


@pytest.mark.parametrize("name", ["données.tar.gz", "a,b (1).tar.gz", "it's [copy] {2}.tar.gz", 'say "x"#1.tar.gz',
                                  "${HOME}.tar.gz", "back\\slash\\'\\.tar.gz", "ends-in\\"])
def test_an_archive_at_any_path_reaches_dvc_whole(workspace, tmp_path, name, capsys):
    """DVC's -S grammar refused or changed such a path unquoted, with advice for a -S the user never wrote."""
    archive = write_official_archive(tmp_path / "archives" / name)
    cmd = command("quick", str(archive), None, "x", machine={})
    settings = [cmd[i + 1] for i, part in enumerate(cmd) if part == "-S"]
    assert with_overrides(load_params(), settings).raw["data"]["archive"] == str(archive)   # as `dvc exp run` reads it
    assert main(["quick", "--dry-run", "--name", "x", "--archive", str(archive)]) == 0, capsys.readouterr().err


def test_an_archive_without_its_md5_gets_it_computed(tmp_path):
    """DVC records a local archive by its md5 param alone (check_params refuses one without it)."""
    archive = tmp_path / "local.tar.gz"
    archive.write_bytes(b"some bytes")
    cmd = command("quick", str(archive), None, "x", machine={})
    assert f"data.archive_md5={hashlib.md5(b'some bytes').hexdigest()}" in cmd
    assert "data.archive_md5=''" in command("quick", str(tmp_path / "missing.tar.gz"), None, "x", machine={})


@pytest.mark.parametrize("bf16", [True, False])
def test_the_command_names_the_numerics_it_runs_with(bf16):
    cmd = command("quick", None, None, "x", machine={"compute.fast": bf16})
    assert {"compute.device=cpu", "compute.threads=2", f"compute.fast={str(bf16).lower()}"} <= set(cmd)


@pytest.mark.parametrize("bf16", [True, False])
def test_a_cpu_without_bf16_units_is_told_it_runs_fp32_and_what_that_changes(bf16, monkeypatch, capsys):
    monkeypatch.setattr(preset, "machine_settings", lambda: {"compute.fast": bf16})
    monkeypatch.setattr(preset, "check_before_running", lambda cmd, destination: None)   # bf16 without bf16 units
    assert main(["quick", "--dry-run", "--name", "x"]) == 0
    out = capsys.readouterr().out
    assert f"compute.fast={str(bf16).lower()}" in out
    assert ("runs in fp32" in out) is not bf16 and ("not a copy" in out) is not bf16


def test_an_archive_without_an_md5_is_an_empty_string_not_null():
    cmd = command("quick", "a.tar.gz", None, "x", machine={})
    assert "data.archive_md5=''" in cmd


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder with this project's params.yaml, where a stand-in for `dvc exp run` records its calls."""
    (tmp_path / "params.yaml").write_bytes(PARAMS.read_bytes())
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(preset, "run_in_group", lambda cmd: calls.append(cmd))
    monkeypatch.setattr(preset, "existing_names", lambda root: {"taken"})   # `dvc exp list` of a repository
    return calls


@pytest.mark.parametrize("arguments, words", [
    (["--archive", "missing.tar.gz"], "CIFAR-10 archive not found: missing.tar.gz"),
    (["--publish", "params.yaml"], "--publish params.yaml: is a file"),
    (["--publish", "params.yaml/sub"], "params.yaml is a file, not a folder"),
    # publish replaces its folder whole: these would have deleted the project, or files that were never a run's
    (["--publish", "."], "--publish .: is this project"),
    (["--publish", ".."], "--publish ..: is a folder holding this project"),
    (["--publish", "/"], "--publish /: is a folder holding this project"),
    (["--publish", "notes"], "--publish notes: holds files that are not a published run"),
    # where a rerun of a stage deletes what is there
    (["--publish", "reports/training/run-0/pub"], "--publish reports/training/run-0/pub: lies in reports/"),
    (["--publish", "models"], "--publish models: lies in models/"),
    # what Git never commits, or what DVC, Git and the runs keep for themselves
    (["--publish", ".git/pub"], "--publish .git/pub: lies in .git/, which is no place for results to commit"),
    (["--publish", ".dvc/pub"], "--publish .dvc/pub: lies in .dvc/"),
    (["--publish", ".cache/pub"], "--publish .cache/pub: lies in .cache/"),
    # another preset's publication (results/cpu written over by a quick run)
    (["--publish", "results/cpu"], "--publish results/cpu: holds the published run of the cpu preset, which a quick "
                                   "run would replace; name a folder of its own, e.g. results/quick-<date>"),
    (["--name", "Bad Name!"], "--name 'Bad Name!' is not a valid experiment name"),
    # DVC refused it after its start, advising `dvc exp run -f`, which the preset does not pass
    (["--name", "taken"], "--name taken: an experiment of this commit has that name; choose another, or remove it "
                          "first (`dvc exp remove taken`)"),
    # DVC ran the whole experiment, then could not save it under a name too long for a file
    (["--name", "x" * 300], f"--name '{'x' * 40}... (300 characters)' is not a valid experiment name: use at most 200")])
def test_what_would_fail_later_is_refused_before_dvc_runs(workspace, capsys, arguments, words):
    Path("notes").mkdir()
    (Path("notes") / "todo.md").write_text("a file of the user's\n")
    Path("results/cpu").mkdir(parents=True)
    Path("results/cpu/README.md").write_text(f"# cpu{preset.PUBLISHED_MARK}\n\n- **preset**: `cpu`: ResNet18 ...\n")
    assert main(["quick", "--name", "x", *arguments]) == 2
    assert workspace == []   # dvc never ran
    output = capsys.readouterr()
    errors = output.err.strip().splitlines()
    assert len(errors) == 1 and words in errors[0]
    assert output.out == ""   # no command that will not run, no note on its numerics


def test_a_params_yaml_that_cannot_be_written_is_refused_before_dvc_runs(workspace, monkeypatch, capsys):
    """DVC said `ERROR: unexpected error - [Errno 30] Read-only file system: 'params.yaml'` after every check."""
    simulate_read_only(monkeypatch)
    assert main(["quick", "--name", "x"]) == 2
    assert workspace == []   # dvc never ran
    assert capsys.readouterr().err.strip() == ("error: cannot write params.yaml (Read-only file system): the run writes "
                                               "its overrides there; run from a writable copy of the project")


@pytest.mark.parametrize("cause, fix", [(errno.EROFS, "run from a writable copy of the project"),
                                        (errno.EACCES, "make it writable (for example `chmod u+w params.yaml`)")])
def test_a_params_yaml_that_cannot_be_written_gets_the_fix_for_its_cause(tmp_path, monkeypatch, cause, fix):
    """chmod cannot help a read-only file system."""
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("knn:\n  k: 3\n")
    monkeypatch.setattr(restored, "open", lambda *args, **kwargs: (_ for _ in ()).throw(
        OSError(cause, os.strerror(cause), "params.yaml")), raising=False)
    with pytest.raises(UserError, match=re.escape(fix)):
        restored.check_editable(Path("params.yaml"))


def simulate_read_only(monkeypatch) -> None:
    """params.yaml on a read-only file system, as tools.restored's check opens it (root writes any mode bits)."""
    def read_only(path, mode="r", *args, **kwargs):
        if "+" in mode or "w" in mode or "a" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return open(path, mode, *args, **kwargs)
    monkeypatch.setattr(restored, "open", read_only, raising=False)


def test_a_place_no_folder_can_be_made_is_refused_before_the_run_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # /proc takes no new folder, even from root, for whom os.access says yes
    with pytest.raises(PublishError, match="--publish /proc/robust-cifar-results: cannot write there"):
        preset.check_destination(Path("/proc/robust-cifar-results"), "quick")
    preset.check_destination(Path("results/deep/new"), "quick")
    assert list(tmp_path.iterdir()) == []   # the probe's folders are gone again


def test_an_earlier_publication_or_an_empty_folder_may_be_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "quick-cpu").mkdir(parents=True)
    (tmp_path / "results" / "empty").mkdir()
    (tmp_path / "results" / "quick-cpu" / "README.md").write_text(f"# quick-cpu{preset.PUBLISHED_MARK}\n\n"
                                                                  "- **preset**: `quick`: ResNet18 width 8\n")
    for folder in ("results/quick-cpu", "results/empty", "results/new"):
        preset.check_destination(Path(folder), "quick")


def test_a_failed_run_leaves_params_yaml_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_bytes(PARAMS.read_bytes())
    monkeypatch.chdir(tmp_path)

    def failing_dvc(cmd):
        (tmp_path / "params.yaml").write_text(PARAMS.read_text().replace("k: 3", "k: 0"))  # what dvc leaves
        return 255
    monkeypatch.setattr(preset, "run_in_group", failing_dvc)
    assert main(["quick", "--name", "x"]) == 255
    assert (tmp_path / "params.yaml").read_bytes() == PARAMS.read_bytes()


def test_a_preset_beside_another_tool_that_edits_params_yaml_is_refused_before_dvc_runs(tmp_path, monkeypatch, capsys):
    """A preset started beside another (or beside concurrent_repro -S) ran its experiment on the other's params,
    exit 0, and each put params.yaml back over the other's edit."""
    from robust_cifar.cache import ENV, hold
    from tools.restored import WORKSPACE_LOCK

    monkeypatch.delenv(ENV, raising=False)
    (tmp_path / "params.yaml").write_bytes(PARAMS.read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(preset, "run_in_group", lambda cmd: pytest.fail("DVC ran"))
    first = hold(WORKSPACE_LOCK, "the first")   # as a running preset or concurrent_repro holds it
    assert main(["quick", "--name", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: another preset or concurrent_repro is running in this project")
    assert (tmp_path / "params.yaml").read_bytes() == PARAMS.read_bytes()
    first.close()
    monkeypatch.setattr(preset, "run_in_group", lambda cmd: 0)
    assert main(["quick", "--name", "x"]) == 0   # once it ends
    assert main(["quick", "--name", "x"]) == 0   # and the preset's own hold ended with it


def finished_run(tmp_path: Path) -> None:
    """What a finished run of HEAD with seeds 0 and 1 leaves in the workspace (`tmp_path`), beside an earlier
    run's files and an earlier publication in results/quick-cpu."""
    raw = yaml.safe_load(PARAMS.read_text())
    raw["methods"], raw["seeds"]["train"] = [HEAD], [0, 1]   # the run's; ANGULAR's files and seed 2's are older runs'
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "umap").mkdir()
    (reports / "summary.md").write_text("# summary\n")
    (reports / "summary.json").write_text(json.dumps({"provenance": ["- **data**: x"], "verdict": ["a raises b."]}))
    (reports / "metrics.json").write_text("{}")
    (reports / "aggregate").mkdir()
    (reports / "aggregate" / f"{HEAD}.json").write_text("{}")
    (reports / "umap" / f"{HEAD}.png").write_bytes(b"png")
    (reports / "aggregate" / f"{ANGULAR}.json").write_text("{}")   # DVC leaves a dropped method's outputs
    (reports / "umap" / f"{ANGULAR}.png").write_bytes(b"png")
    for run, device in ((f"{HEAD}-0", "cpu (CPU), fp32"), (f"{ANGULAR}-0", "cuda:0 (an old GPU)")):
        (reports / "training" / run).mkdir(parents=True)
        (reports / "training" / run / "params.yaml").write_text(f"run: {run}\ndevice: {device}\ntorch: 2.13\nthreads: 2\n")
    (reports / "seeds").mkdir()
    (reports / "seeds" / "big.csv").write_text("not published")
    (tmp_path / "results" / "quick-cpu" / "umap").mkdir(parents=True)
    (tmp_path / "results" / "quick-cpu" / "umap" / "stale.png").write_bytes(b"an earlier run's")
    (tmp_path / "results" / "quick-cpu" / "README.md").write_text(f"# quick-cpu{preset.PUBLISHED_MARK}\n")
    (tmp_path / ".cache" / "timing").mkdir(parents=True)
    for stage, seconds in ((f"train-{HEAD}-0", 30.0), (f"train-{HEAD}-1", 40.2), (f"embed-{HEAD}-0", 5.0),
                           (f"train-{HEAD}-2", 99.0), (f"train-{ANGULAR}-0", 99.0), (f"aggregate-{ANGULAR}", 9.0)):
        (tmp_path / ".cache" / "timing" / f"{stage}.json").write_text(json.dumps({"stage": stage, "seconds": seconds}))


def test_publish_copies_the_small_results_with_the_command_that_made_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    finished_run(tmp_path)
    copied = publish(tmp_path / "results" / "quick-cpu", "python -m tools.preset quick", wall_seconds=634.8)
    assert not (tmp_path / "results" / "quick-cpu" / "umap" / "stale.png").exists()   # replaced whole
    names = sorted(str(path.relative_to(tmp_path / "results" / "quick-cpu")) for path in copied)
    assert names == [f"aggregate/{HEAD}.json", "metrics.json", "summary.json", "summary.md", f"umap/{HEAD}.png"]
    readme = (tmp_path / "results" / "quick-cpu" / "README.md").read_text()
    assert "python -m tools.preset quick" in readme and "- **data**: x" in readme and "- a raises b." in readme
    assert f"`python -m tools.crosscheck --out {tmp_path / 'results' / 'quick-cpu'}/crosscheck.md`" in readme
    assert "**wall time of the command**: 10.6 min" in readme
    assert "- **device**: cpu (CPU), fp32, torch 2.13, 2 CPU threads." in readme   # not the dropped method's GPU
    # the time budget per stage kind, and what DVC and the stages' start-up took beside them
    assert "| train | 2 | 70 s | 30-40 s |" in readme and "| embed | 1 | 5 s | 5-5 s |" in readme
    assert "| DVC and each stage's start-up (the rest of the wall time) | 3 | 560 s | 186.5 s per stage |" in readme
    # a rerun that reused most stages says whose times the table holds
    assert "reused stages of an earlier run, whose times these are" in "\n".join(time_lines(
        {f"train-{HEAD}-0": 30.0, "summarize-": 1.0}, wall_seconds=5.0))


def test_a_damaged_timing_file_is_passed_over_not_a_traceback_after_the_run(tmp_path):
    """The publication's time budget read `[]` as a record (TypeError) and other bytes as text (UnicodeDecodeError),
    after the whole run."""
    good = {"stage": f"train-{HEAD}-0", "seconds": 30.0}
    (tmp_path / "good.json").write_text(json.dumps(good))
    for name, content in {"list": b"[]", "bytes": bytes(range(128, 256)), "text": b"x", "null": b"null",
                          "no seconds": b'{"stage": "a"}', "text seconds": b'{"stage": "b", "seconds": "3"}',
                          "seconds true": b'{"stage": "c", "seconds": true}', "stage 3": b'{"stage": 3, "seconds": 1}'}.items():
        (tmp_path / f"{name}.json").write_bytes(content)
    assert stage_times(tmp_path) == {good["stage"]: good["seconds"]}


def test_a_symbolic_link_is_refused_before_the_run(tmp_path, monkeypatch):
    """Replaced whole, the link was removed in place of its folder: a traceback after the run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PublishError) as refused:
        preset.check_destination(Path("results/linked"), "quick")
    assert str(refused.value) == (f"--publish results/linked: is a symbolic link (to {tmp_path / 'elsewhere'}); name "
                                  f"the folder itself ({tmp_path / 'elsewhere'}) or a new one")


def copies_failing_at_the_third(monkeypatch, error: BaseException) -> None:
    real, calls = shutil.copyfile, []

    def copyfile(source, target):
        calls.append(source)
        if len(calls) == 3:
            Path(target).write_bytes(b"half")
            raise error
        return real(source, target)
    monkeypatch.setattr(shutil, "copyfile", copyfile)


@pytest.mark.parametrize("error, code, words", [
    (OSError(errno.ENOSPC, "No space left on device"), 2,
     "error: no space left on the disk holding results while publishing into results/quick-cpu (the partial copy was "
     "removed): free some space there; the run finished and results/quick-cpu is as it was; to publish, rerun the "
     "command with a new --name (DVC reuses every stage from its run cache)"),
    (Stopped(signal.SIGTERM), 143,
     "interrupted (SIGTERM) while publishing: the run finished and results/quick-cpu is as it was; to publish, rerun "
     "the command with a new --name (DVC reuses every stage from its run cache)")])
def test_a_full_disk_or_a_signal_while_publishing_leaves_the_earlier_publication_whole(
        tmp_path, monkeypatch, capsys, error, code, words):
    """Both were a traceback or a bare `interrupted` after the run, and left a half-copied folder beside it."""
    monkeypatch.chdir(tmp_path)
    finished_run(tmp_path)
    earlier = {path: path.read_bytes() for path in (tmp_path / "results").rglob("*") if path.is_file()}
    monkeypatch.setattr(preset, "run_in_group", lambda cmd: 0)   # the run finished
    monkeypatch.setattr(preset, "existing_names", lambda root: set())
    copies_failing_at_the_third(monkeypatch, error)
    assert main(["quick", "--name", "x", "--publish", "results/quick-cpu"]) == code
    assert capsys.readouterr().err.strip() == words
    assert {path: path.read_bytes() for path in (tmp_path / "results").rglob("*") if path.is_file()} == earlier
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == ["quick-cpu"]


def test_a_signal_while_the_publication_is_swapped_in_waits_for_the_swap(tmp_path, monkeypatch):
    """Between removing the earlier publication and renaming the new one in, a signal left neither."""
    monkeypatch.chdir(tmp_path)
    finished_run(tmp_path)
    real = Path.rename

    def rename(self, target):
        os.kill(os.getpid(), signal.SIGTERM)   # arrives at the first rename: held until both are done
        return real(self, target)
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    stop_on_signals()
    monkeypatch.setattr(Path, "rename", rename)
    try:
        with pytest.raises(Stopped):
            publish(tmp_path / "results" / "quick-cpu", "python -m tools.preset quick")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert (tmp_path / "results" / "quick-cpu" / "summary.md").read_text() == "# summary\n"   # the new one, whole
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == ["quick-cpu"]   # the old one removed


def test_a_signal_during_the_swap_is_said_to_have_come_as_the_run_was_published(tmp_path, monkeypatch, capsys):
    """The line said the folder was as it was, when the new publication was in place."""
    monkeypatch.chdir(tmp_path)
    finished_run(tmp_path)
    monkeypatch.setattr(preset, "run_in_group", lambda cmd: 0)
    monkeypatch.setattr(preset, "existing_names", lambda root: set())
    real = Path.rename

    def rename(self, target):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, target)
    monkeypatch.setattr(Path, "rename", rename)
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        assert main(["quick", "--name", "x", "--publish", "results/quick-cpu"]) == 143
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert capsys.readouterr().err.strip() == "interrupted (SIGTERM) as the run was published: 5 files in " \
                                              "results/quick-cpu, whole"
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == ["quick-cpu"]


@pytest.mark.parametrize("flags, units", [("fpu avx avx2 avx512f avx512_bf16 amx_bf16", "bf16 units: avx512_bf16, amx_bf16"),
                                          ("fpu avx avx2", "bf16 units: none (avx2)")])
def test_the_cpu_is_named_with_its_bf16_units(tmp_path, flags, units):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {i}\nmodel name\t: AMD EPYC 9R14\nflags\t\t: {flags}\n\n" for i in range(2)))
    assert cpu_description(cpuinfo) == f"AMD EPYC 9R14, 2 cores, {units}"
    assert cpu_description(tmp_path / "missing") == "unknown"
