"""The independent check (python -m tools.crosscheck) on the reproduced tiny project."""
import errno
import re
import shutil
from pathlib import Path

import pytest
import yaml

from robust_cifar.errors import DiskFullError, InputError
from tests.methods import HEAD
from tests.pipeline_project import METHODS
from tools import crosscheck

pytest.importorskip("pyautoattack")


def test_the_reference_library_confirms_the_tiny_projects_robust_accuracy(reproduced_project, monkeypatch, tmp_path):
    monkeypatch.chdir(reproduced_project)
    out = tmp_path / "crosscheck.md"
    # as cheap as the tiny project's own attacks (a few iterations; its settings are in pipeline_project.py)
    assert crosscheck.main(["--out", str(out), "--iterations", "4", "--head-attacks", "apgd-ce", "apgd-dlr",
                            "--temperatures", "0.05"]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "-0 |" in line]
    # a head and a k-NN for the methods with a head, a k-NN for the angular ones, named by the project's knn.k
    assert len(rows) == 2 * len(METHODS) - 2
    k = yaml.safe_load((reproduced_project / "params.yaml").read_text())["knn"]["k"]
    assert sum(f"| {k}-NN |" in row for row in rows) == len(METHODS)
    assert all(row.endswith("| yes |") for row in rows), rows


def test_a_project_number_above_the_reference_fails_the_check():
    rows = [{"run": f"{HEAD}-0", "decision": "head", "images": 100, "project": 0.10, "reference": 0.05,
             "overcounted": 5}]
    assert "**NO**" in crosscheck.table(rows, 0.02) and "+5.0" in crosscheck.table(rows, 0.02)
    assert "| yes |" in crosscheck.table(rows, 0.05)


@pytest.mark.parametrize("arguments, words", [
    (["--methods", "bogus"], "--methods bogus: not in params.yaml's `methods`"),
    (["--seeds", "99"], "--seeds 99: not in params.yaml's `seeds.train`"),
    (["--seeds"], "--seeds: give at least one seed"),   # an empty shell variable once checked nothing, and passed
    (["--methods"], "--methods: give at least one method"),
    (["--temperatures", "inf"], "--temperatures inf: must be a finite number above 0"),   # it scored "yes"
    (["--out", "reports"], "--out reports: is a folder; name a new .md file"),   # it failed after the attacks
    # each was overwritten (params.yaml, a DVC output), or the advice was `rm -r .`
    (["--out", ""], "--out .: is a folder; name a new .md file"),
    (["--out", "params.yaml"], "--out params.yaml: is a file of the project's top level"),
    (["--out", "README.md"], "--out README.md: is a file of the project's top level"),
    (["--out", "reports/summary.md"], "--out reports/summary.md: lies in reports/, where DVC writes the pipeline's"),
    (["--out", ".dvc/table.md"], "--out .dvc/table.md: lies in .dvc/, where DVC or Git keeps its records"),
    (["--out", "dvc.lock/table.md"], "cannot write dvc.lock/table.md: dvc.lock is a file, not a folder"),
    (["--head-attacks", "bogus"], "--head-attacks bogus: not one of AutoAttack's"),
    (["--iterations", "-5"], "--iterations -5: must be at least 1"),
    (["--tolerance", "2"], "--tolerance 2.0: must be from 0 to 1"),
    (["--out", "params.yaml/table.md"], "cannot write params.yaml/table.md: params.yaml is a file, not a folder")])
def test_what_cannot_be_checked_is_one_line_before_any_attack(reproduced_project, monkeypatch, arguments, words):
    from robust_cifar.errors import UserError
    monkeypatch.chdir(reproduced_project)
    monkeypatch.setattr(crosscheck, "check_run", lambda *args: pytest.fail("an attack ran"))
    with pytest.raises(UserError, match=re.escape(words)) as refused:
        crosscheck.main(arguments)
    assert "\n" not in str(refused.value) and "rm -r" not in str(refused.value)


def test_a_run_not_reproduced_is_named_before_any_attack(reproduced_project, tmp_path, monkeypatch):
    from robust_cifar.errors import InputError
    shutil.copy(reproduced_project / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"no models/\S+-0\.pt \(and \d+ more files\): .* `dvc repro`"):
        crosscheck.main([])


def test_a_full_disk_while_the_report_is_written_is_one_line_and_the_earlier_report_stays(reproduced_project,
                                                                                          monkeypatch, tmp_path):
    """The report used to be written in place after the attacks: a full disk left it empty, after a traceback."""
    monkeypatch.chdir(reproduced_project)
    out = tmp_path / "crosscheck.md"
    out.write_text(crosscheck.TITLE + "\n\nan earlier check\n")
    monkeypatch.setattr(crosscheck, "check_run", lambda method, seed, *rest: [
        {"run": f"{method}-{seed}", "decision": "head", "images": 10, "project": 0.0, "reference": 0.0, "overcounted": 0}])
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        real(self, text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DiskFullError, match=rf"^no space left on the disk holding {tmp_path} while writing crosscheck.md"):
        crosscheck.main(["--methods", HEAD, "--out", str(out)])
    monkeypatch.setattr(Path, "write_text", real)
    assert out.read_text() == crosscheck.TITLE + "\n\nan earlier check\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["crosscheck.md"]


def test_an_out_over_a_markdown_file_that_is_no_earlier_report_is_refused_before_any_attack(reproduced_project,
                                                                                           monkeypatch, tmp_path):
    """A published run's summary.md or README.md, or a doc, was overwritten by the table."""
    monkeypatch.chdir(reproduced_project)
    monkeypatch.setattr(crosscheck, "check_run", lambda *arguments: pytest.fail("attacked before refusing"))
    summary = tmp_path / "summary.md"
    summary.write_text("# Summary\n")
    with pytest.raises(InputError, match=rf"--out {summary}: exists and is no earlier .md report of this tool"):
        crosscheck.main(["--methods", HEAD, "--out", str(summary)])
    earlier = tmp_path / "crosscheck.md"
    earlier.write_text(crosscheck.TITLE + "\n\nan earlier table\n")
    crosscheck.check_report_file(earlier, "--out", ".md", "x.md", earlier=crosscheck.is_report)   # may be replaced


def test_outputs_that_are_not_what_the_params_make_are_refused_before_any_attack(reproduced_project, monkeypatch):
    """An experiment's reports (knn.k=7) beside params.yaml put back alone (knn.k=3) gave a false NO."""
    monkeypatch.chdir(reproduced_project)
    monkeypatch.setattr(crosscheck, "check_run", lambda *arguments: pytest.fail("attacked before refusing"))
    params = reproduced_project / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("\n  k: 3\n", "\n  k: 1\n"))
        with pytest.raises(InputError, match=rf"^the workspace's outputs are not what params.yaml and the code make now "
                                             rf"\(`dvc status`: robustness@{HEAD}-0 changed\): run `dvc repro` first"):
            crosscheck.main(["--methods", HEAD, "--seeds", "0"])
    finally:
        params.write_text(original)


def test_an_out_in_the_publication_of_another_run_is_refused_and_in_this_runs_is_written(reproduced_project,
                                                                                        monkeypatch, tmp_path):
    """The check of the workspace's run replaced a published run's crosscheck.md, in a folder describing another."""
    monkeypatch.chdir(reproduced_project)
    monkeypatch.setattr(crosscheck, "check_run", lambda method, seed, *rest: [
        {"run": f"{method}-{seed}", "decision": "head", "images": 10, "project": 0.0, "reference": 0.0, "overcounted": 0}])
    other, this = tmp_path / "other", tmp_path / "this"
    for folder, summary in ((other, b'{"another": "run"}'), (this, (reproduced_project / "reports/summary.json").read_bytes())):
        folder.mkdir()
        (folder / "summary.json").write_bytes(summary)
    with pytest.raises(InputError, match=rf"--out {other}/crosscheck.md: its folder publishes another run than this "
                                         "workspace's"):
        crosscheck.main(["--methods", HEAD, "--seeds", "0", "--out", str(other / "crosscheck.md")])
    assert crosscheck.main(["--methods", HEAD, "--seeds", "0", "--out", str(this / "crosscheck.md")]) == 0
    assert (this / "crosscheck.md").read_text().startswith(crosscheck.TITLE)
