"""tools.concurrent_repro: the schedule (unit tests with stand-in commands) and one real tiny pipeline."""
from __future__ import annotations

import json
import os
import re
import signal
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from robust_cifar.errors import UserError
from robust_cifar.signals import Stopped
from robust_cifar.training.methods.registry import REFERENCE_METHOD
from tests.pipeline_project import ROOT, dvc, not_copied, run as run_command
from tools import concurrent_repro
from tools.concurrent_repro import plan_from_graph, run, set_params
from tools.restored import WORKSPACE_LOCK

# a diamond with a tail: a -> (b, c) -> d, and e independent of everything
GRAPH = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": set()}


def test_plan_runs_the_stale_stages_and_everything_downstream_of_them():
    plan = plan_from_graph(GRAPH, stale={"b"})
    assert set(plan.upstream) == {"b", "d"}
    # `c` is up to date: `d` waits only for what runs
    assert plan.upstream["d"] == {"b"} and plan.upstream["b"] == set()


def test_below_check_params_only_what_dvc_reports_changed_runs():
    """check_params reruns on every edit of params.yaml or the code and writes the same output: a comment added to
    params.yaml once handed all 37 stages to DVC, which then skipped 36."""
    graph = {"check_params": set(), **{stage: {"check_params", *upstream} for stage, upstream in GRAPH.items()}}
    plan = plan_from_graph(graph, stale={"check_params", "c"})
    assert set(plan.upstream) == {"check_params", "c", "d"} and plan.upstream["d"] == {"check_params", "c"}
    assert set(plan_from_graph(graph, stale={"check_params"}).upstream) == {"check_params"}


def test_nothing_stale_means_nothing_to_run():
    assert plan_from_graph(GRAPH, stale=set()).upstream == {}


def test_ready_stages_come_longest_chain_first():
    plan = plan_from_graph(GRAPH, stale=set(GRAPH))
    assert plan.ready(done=set(), started=set()) == ["a", "e"]   # a has three stages below it, e none
    assert plan.ready(done={"a"}, started={"a", "e"}) == ["b", "c"]
    assert plan.ready(done={"a", "b"}, started={"a", "b", "c", "e"}) == []   # d still waits for c


def stand_in(log: Path, seconds: float = 0.3, fail: dict[str, int] | None = None,
             waits_for: dict[str, list[tuple[str, str]]] | None = None, started: int = 0):
    """A command per stage that records its start and end in `log`, sleeps, and may exit non-zero.

    Events instead of timing where a test needs stages to overlap: after its start a stage waits (up to
    a minute) until the log holds every (stage, event) of `waits_for[stage]` and at least `started`
    starts in all, so an overlap the schedule should give cannot be missed on a busy machine, and one it
    does not give shows as a stage that timed out."""
    fail, waits_for = fail or {}, waits_for or {}

    def command(stage: str) -> list[str]:
        code = (f"import json, sys, time\n"
                f"sys.path.insert(0, {str(ROOT)!r})\n"
                f"from robust_cifar.signals import stop_on_signals\n"
                f"stop_on_signals()\n"
                f"def note(event):\n"
                f"    with open({str(log)!r}, 'a') as f: f.write(json.dumps([{stage!r}, event, time.time()]) + '\\n')\n"
                f"def seen():\n"
                f"    with open({str(log)!r}) as f: return [tuple(json.loads(line)[:2]) for line in f if line.endswith('\\n')]\n"   # whole lines
                f"note('start')\n"
                f"try:\n"
                f"    deadline = time.time() + 60\n"
                f"    while not (set(map(tuple, {waits_for.get(stage, [])!r})) <= set(seen())\n"
                f"               and sum(event == 'start' for _, event in seen()) >= {started}):\n"
                f"        if time.time() > deadline:\n"
                f"            note('timed out'); print('error: stand-in {stage} waited in vain'); sys.exit(9)\n"
                f"        time.sleep(0.01)\n"
                f"    time.sleep({seconds})\n"
                f"except KeyboardInterrupt:\n"
                f"    note('interrupted'); print('interrupted: stand-in'); sys.exit(130)\n"
                f"if {fail.get(stage, 0)}:\n"
                f"    note('failed'); print('error: stand-in failure of {stage}'); sys.exit({fail.get(stage, 0)})\n"
                f"note('end')\n")
        return [sys.executable, "-c", code]
    return command


def events(log: Path) -> dict[tuple[str, str], float]:
    return {(stage, event): at for stage, event, at in map(json.loads, log.read_text().splitlines())}


def test_each_stage_starts_after_its_upstream_and_independent_ones_overlap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log, lines = tmp_path / "events.jsonl", []
    plan = plan_from_graph(GRAPH, stale=set(GRAPH))
    # a ends only once e has started: two jobs must run them side by side
    assert run(plan, jobs=2, echo=lines.append, command=stand_in(log, waits_for={"a": [("e", "start")]})) == 0
    seen = events(log)
    for stage, upstream in GRAPH.items():
        for dependency in upstream:
            assert seen[(dependency, "end")] <= seen[(stage, "start")], (dependency, stage)
    assert seen[("e", "start")] < seen[("a", "end")]   # two jobs: e ran beside a
    assert len(lines) == len(GRAPH) and lines[-1].startswith("[5/5] d: ")


def test_never_more_stages_at_once_than_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "events.jsonl"
    independent = {name: set() for name in "pqrst"}
    # each stage ends only once two have started: the first two overlap whatever the machine's load
    assert run(plan_from_graph(independent, set(independent)), jobs=2, echo=lambda line: None,
               command=stand_in(log, started=2)) == 0
    timeline = sorted((at, +1 if event == "start" else -1) for (_, event), at in events(log).items())
    at_once = max(sum(step for _, step in timeline[: i + 1]) for i in range(len(timeline)))
    assert at_once == 2


def test_a_failure_starts_nothing_new_lets_running_stages_finish_and_names_the_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log, lines = tmp_path / "events.jsonl", []
    graph = {"a": set(), "slow": set(), "after_a": {"a"}}
    # slow ends only after a has failed: it was running then, and is let finish
    command = stand_in(log, fail={"a": 3}, waits_for={"slow": [("a", "failed")]})
    assert run(plan_from_graph(graph, set(graph)), jobs=2, echo=lines.append, command=command) == 3
    seen = events(log)
    assert ("after_a", "start") not in seen
    assert ("slow", "end") in seen   # not killed: its work is kept
    assert any(line.startswith("failed: a (exit 3): error: stand-in failure of a") for line in lines), lines


def test_a_stage_that_crashes_is_named_by_its_exception(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    # as dvc reports a stage command that died with a traceback
    crash = lambda stage: ["sh", "-c", f"{sys.executable} -c '1 / 0'; echo \"ERROR: failed to reproduce '{stage}'\"; exit 255"]  # noqa: E731
    assert run(plan_from_graph({"a": set()}, {"a"}), jobs=1, echo=lines.append, command=crash) == 255
    assert lines[0].startswith("failed: a (exit 255): ZeroDivisionError: division by zero"), lines


def test_a_stage_killed_by_a_signal_fails_the_run_with_the_shells_code_for_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    killed = lambda stage: ["sh", "-c", "kill -KILL $$"]  # noqa: E731 - as a dvc killed by the OOM killer
    assert run(plan_from_graph({"a": set()}, {"a"}), jobs=1, echo=lines.append, command=killed) == 137
    assert lines[0].startswith("failed: a (exit 137)"), lines


@pytest.mark.parametrize("log, expected", [
    ("Running stage 'x':\nerror: params.yaml: `knn.k` = 0 is invalid\nERROR: failed to reproduce 'x'", "error: params.yaml"),
    ("Traceback (most recent call last):\n  File ...\nKeyError: 'k'\nERROR: failed to reproduce 'x'", "KeyError: 'k'"),
    ("Running stage 'x':\nERROR: Unable to acquire lock", "ERROR: Unable to acquire lock"),
    ("", "(no output)"),
])
def test_the_failure_line_is_the_most_telling_line_of_the_log(tmp_path, log, expected):
    path = tmp_path / "x.log"
    path.write_text(log)
    assert concurrent_repro.failure_line(path).startswith(expected)


def test_a_stage_whose_log_met_a_full_disk_is_said_so(tmp_path, monkeypatch):
    """The line read `(no output)`: the full disk that kept the stage's own line out of the log went unnamed."""
    (tmp_path / "stage.log").write_text("")
    monkeypatch.setattr(concurrent_repro, "free_bytes", lambda folder: 0)
    assert concurrent_repro.failure_line(tmp_path / "stage.log") == (
        f"(no output: the disk holding {tmp_path} is full; free some space there, then rerun)")
    monkeypatch.setattr(concurrent_repro, "free_bytes", lambda folder: 10**12)
    assert concurrent_repro.failure_line(tmp_path / "stage.log") == "(no output)"


def test_stages_run_with_the_python_that_runs_the_schedule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    found = tmp_path / "python.txt"
    which = lambda stage: ["sh", "-c", f"command -v python > {found}"]  # noqa: E731
    assert run(plan_from_graph({"a": set()}, {"a"}), jobs=1, echo=lambda line: None, command=which) == 0
    assert Path(found.read_text().strip()).parent == Path(sys.executable).parent


def test_ctrl_c_reaches_each_running_stage_once_and_returns_130(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "events.jsonl"
    graph = {"quick": set(), "long": set()}
    command = lambda stage: stand_in(log, seconds=0.2 if stage == "quick" else 30)(stage)  # noqa: E731

    def echo(line):   # Ctrl-C arrives while `long` runs
        raise KeyboardInterrupt

    started = time.perf_counter()
    assert run(plan_from_graph(graph, set(graph)), jobs=2, echo=echo, command=command) == 130
    assert time.perf_counter() - started < 20
    assert ("long", "interrupted") in events(log)
    assert capsys.readouterr().err.strip().startswith("interrupted (SIGINT): finished stages are kept")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_term_or_hup_stop_every_running_stage_and_return_128_plus_the_signal(tmp_path, monkeypatch, capsys, signum):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "events.jsonl"
    graph = {"quick": set(), "long": set()}
    command = lambda stage: stand_in(log, seconds=0.2 if stage == "quick" else 30)(stage)  # noqa: E731

    def echo(line):   # a scheduler's TERM, or a closed terminal's HUP, arrives while `long` runs
        raise Stopped(signum)

    assert run(plan_from_graph(graph, set(graph)), jobs=2, echo=echo, command=command) == 128 + signum
    assert ("long", "interrupted") in events(log) and ("long", "end") not in events(log)
    assert capsys.readouterr().err.strip().startswith(f"interrupted ({signal.Signals(signum).name}): ")


def test_ctrl_c_while_reading_the_pipeline_is_one_line(monkeypatch, capsys):
    def interrupted(root):
        raise KeyboardInterrupt
    monkeypatch.setattr(concurrent_repro, "read_pipeline", interrupted)
    assert concurrent_repro.main(["--jobs", "1"]) == 130
    assert capsys.readouterr().err == "interrupted before any stage started\n"


@pytest.mark.parametrize("jobs", [0, -1, concurrent_repro.MAX_JOBS + 1, 10**20])
def test_bad_jobs_is_one_line(capsys, jobs):
    with pytest.raises(SystemExit) as exit_info:
        concurrent_repro.main(["--jobs", str(jobs)])
    assert exit_info.value.code == 2
    assert f"--jobs {jobs}: must be from 1 to {concurrent_repro.MAX_JOBS}" in capsys.readouterr().err


def test_a_stage_dvc_did_not_run_is_said_so(tmp_path, monkeypatch):
    """DVC skips a stage downstream of a changed one when its inputs came out the same, or restores it from
    the run cache: its line says so instead of passing a second's check for a run."""
    monkeypatch.chdir(tmp_path)
    said = {"a": "Stage 'a' didn't change, skipping", "b": "Stage 'b' is cached - skipping run, checking out outputs",
            "c": "Running stage 'c':"}
    lines = []
    command = lambda stage: ["echo", said[stage]]  # noqa: E731
    assert run(plan_from_graph({"a": set(), "b": {"a"}, "c": {"b"}}, {"a"}), jobs=1, echo=lines.append,
               command=command) == 0
    assert [line.split(": ", 1)[0] for line in lines] == ["[1/3] a", "[2/3] b", "[3/3] c"]
    assert lines[0].endswith(" s (unchanged)") and lines[1].endswith(" s (restored from the run cache)"), lines
    assert lines[2].endswith(" s"), lines


def test_outside_a_dvc_project_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert concurrent_repro.main(["--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dvc cannot read the pipeline") and len(err.strip().splitlines()) == 1


def test_a_dvc_message_ending_in_a_colon_keeps_what_follows(monkeypatch):
    """DVC's lock error is `'x' is busy, it is being blocked by:` and then the process: one line with both."""
    from dvc.exceptions import DvcException
    from dvc import repo as dvc_repo

    def busy(*args, **kwargs):
        raise DvcException("'dvc.lock' is busy, it is being blocked by:\n  (PID 123): dvc repro\n\nIf there are no...")
    monkeypatch.setattr(dvc_repo, "Repo", busy)
    with pytest.raises(UserError, match=re.escape("dvc cannot read the pipeline: 'dvc.lock' is busy, it is being "
                                                  "blocked by: (PID 123): dvc repro (`dvc repro` shows")):
        concurrent_repro.read_pipeline(Path("."))


def test_set_params_edits_params_yaml_as_dvc_exp_run_does(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copyfile(Path(__file__).resolve().parent.parent / "params.yaml", params)
    set_params(["seeds.train=[0, 1]", "knn.k=1", "compute.device=cpu", "compute.fast=false"], params)
    values = yaml.safe_load(params.read_text())
    assert values["seeds"]["train"] == [0, 1] and values["knn"]["k"] == 1 and values["compute"]["device"] == "cpu"
    assert "# one model per method and seed" in params.read_text()   # comments kept


@pytest.mark.parametrize("override, words", [("knn.kk=1", "params.yaml has no key `knn.kk`: did you mean `knn.k`?"),
                                             ("nothing.like.it=1", "params.yaml has no key `nothing.like.it`: give one"),
                                             ("knn.k", "override 'knn.k' is not key=value"),
                                             ("seeds.train=[0,", "no viable alternative at input '[0,'"),
                                             ("knn.k=0", "`knn.k` = 0 is invalid")])
def test_a_bad_override_is_one_line_and_leaves_params_yaml_alone(tmp_path, override, words):
    params = tmp_path / "params.yaml"
    shutil.copyfile(Path(__file__).resolve().parent.parent / "params.yaml", params)
    before = params.read_text()
    with pytest.raises(UserError, match=re.escape(words)) as refused:
        set_params(["compute.device=cpu", "compute.fast=false", override], params)
    assert "\n" not in str(refused.value)
    assert params.read_text() == before


def test_a_params_yaml_that_cannot_be_written_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    """DVC's writer met the read-only file system inside set_params: a 25-line traceback."""
    from tests.test_preset import simulate_read_only

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    simulate_read_only(monkeypatch)
    monkeypatch.setattr(concurrent_repro, "run", lambda plan, jobs, echo: pytest.fail("a stage ran"))
    assert concurrent_repro.main(["-S", "knn.k=7"]) == 2
    assert capsys.readouterr().err.strip() == ("error: cannot write params.yaml (Read-only file system): the run writes "
                                               "its overrides there; run from a writable copy of the project")


@pytest.mark.parametrize("returncode, kept", [(255, False), (0, True)])
def test_a_failed_run_puts_back_the_params_yaml_its_overrides_edited(tmp_path, monkeypatch, capsys, returncode, kept):
    """A value only a stage refuses (knn.k above the training images) stayed in params.yaml, unsaid."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(Path(__file__).resolve().parent.parent / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    monkeypatch.setattr(concurrent_repro, "read_pipeline", lambda root: ({"evaluate": set()}, {"evaluate"}))
    monkeypatch.setattr(concurrent_repro, "run", lambda plan, jobs, echo: returncode)   # a stage refused the value
    assert concurrent_repro.main(["-S", "compute.device=cpu", "-S", "compute.fast=false", "-S", "knn.k=7"]) == returncode
    edited = yaml.safe_load((tmp_path / "params.yaml").read_text())["knn"]["k"] == 7
    assert edited is kept and ((tmp_path / "params.yaml").read_bytes() == before) is not kept
    assert ("params.yaml is as it was before the run" in capsys.readouterr().err) is not kept


def test_ctrl_c_while_the_overrides_are_written_leaves_params_yaml_whole_and_as_it_was(tmp_path, monkeypatch, capsys):
    """DVC's edit truncates params.yaml and writes it again: a Ctrl-C between the two left it empty."""
    import dvc.utils.hydra

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(Path(__file__).resolve().parent.parent / "params.yaml", tmp_path / "params.yaml")
    before, real, finished = (tmp_path / "params.yaml").read_bytes(), dvc.utils.hydra.apply_overrides, []

    def interrupted_halfway(path, overrides):   # as DVC writes: the file emptied, then its new text
        if Path(path).resolve() != tmp_path / "params.yaml":   # the check's edit of a copy
            return real(path, overrides)
        Path(path).write_bytes(b"")
        os.kill(os.getpid(), signal.SIGINT)
        Path(path).write_bytes(before.replace(b"k: 3", b"k: 7"))
        finished.append(path)
    monkeypatch.setattr(dvc.utils.hydra, "apply_overrides", interrupted_halfway)
    monkeypatch.setattr(concurrent_repro, "read_pipeline", lambda root: pytest.fail("went on after the Ctrl-C"))
    assert concurrent_repro.main(["-S", "compute.device=cpu", "-S", "compute.fast=false", "-S", "knn.k=7"]) == 130
    assert finished   # the Ctrl-C waited for the whole edit (a tool without the put-back would keep a whole file)
    assert (tmp_path / "params.yaml").read_bytes() == before
    assert capsys.readouterr().err.splitlines() == ["interrupted before any stage started",
                                                    "params.yaml is as it was before the run (in the work tree)"]


def test_a_second_run_in_the_same_project_is_refused_before_it_edits_params_yaml(tmp_path, monkeypatch, capsys):
    """A second `-S knn.k=7` edited params.yaml under the first `-S knn.k=5`, whose stages then recorded k=7."""
    from robust_cifar.cache import ENV, hold

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(Path(__file__).resolve().parent.parent / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    first = hold(WORKSPACE_LOCK, "the first")   # as the first run (or a preset's) holds it
    monkeypatch.setenv(ENV, str(tmp_path / "a cache of its own"))   # the second's shell: the lock is the project's
    monkeypatch.setattr(concurrent_repro, "read_pipeline", lambda root: pytest.fail("the second went on"))
    assert concurrent_repro.main(["-S", "compute.device=cpu", "-S", "compute.fast=false", "-S", "knn.k=7"]) == 2
    assert capsys.readouterr().err == ("error: another preset or concurrent_repro is running in this project, and each "
                                       "edits params.yaml, which the other's stages read (it holds "
                                       ".cache/locks/workspace.lock): let it finish or stop it, then rerun\n")
    assert (tmp_path / "params.yaml").read_bytes() == before
    first.close()
    monkeypatch.setattr(concurrent_repro, "read_pipeline", lambda root: ({}, set()))
    assert concurrent_repro.main([]) == 0   # once the first ends


def outs(lock: dict, stage: str) -> list:
    return [(out["path"], out["md5"]) for out in lock["stages"][stage]["outs"]]


@pytest.mark.long(seconds=45)
def test_the_tiny_pipeline_run_concurrently_leaves_what_dvc_repro_leaves(reproduced_project, tmp_path):
    """The reference method's tiny pipeline, two stages at a time (evaluate, robustness and umap_plot side
    by side): every run's outputs have the bytes of the sequential `dvc repro` (the shared fixture), and
    DVC sees nothing left to do."""
    project = tmp_path / "project"
    shutil.copytree(reproduced_project, project, ignore=not_copied(reproduced_project))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["methods"] = [REFERENCE_METHOD]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run_command(project, *command)

    result = run_command(project, "python", "-m", "tools.concurrent_repro", "--jobs", "2")
    assert result.stdout.splitlines()[0].startswith("13 of 13 stages to run, 2 at a time"), result.stdout
    assert json.loads(dvc(project, "status", "--json").stdout) == {}   # DVC, run as a user would, sees nothing to do
    sequential = yaml.safe_load((reproduced_project / "dvc.lock").read_text())
    concurrent = yaml.safe_load((project / "dvc.lock").read_text())
    for method in params["methods"]:
        for stage in ("train", "embed", "evaluate", "robustness"):
            name = f"{stage}@{method}-0"
            assert outs(concurrent, name) == outs(sequential, name), name
    again = run_command(project, "python", "-m", "tools.concurrent_repro")
    assert again.stdout.strip() == "every stage is up to date"



@pytest.mark.parametrize("cuda, jobs", [(True, concurrent_repro.GPU_JOBS), (False, 1)])
def test_stages_run_side_by_side_by_default_only_on_a_gpu(monkeypatch, cuda, jobs):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert concurrent_repro.default_jobs() == jobs
