"""The independent check (python -m tools.crosscheck) on the reproduced tiny project."""
import pytest

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
    # a head and a 3-NN for the methods with a head, a 3-NN for the angular ones
    assert len(rows) == 2 * len(METHODS) - 2
    assert all(row.endswith("| yes |") for row in rows), rows


def test_a_project_number_above_the_reference_fails_the_check():
    rows = [{"run": f"{HEAD}-0", "decision": "head", "images": 100, "project": 0.10, "reference": 0.05,
             "overcounted": 5}]
    assert "**NO**" in crosscheck.table(rows, 0.02) and "+5.0" in crosscheck.table(rows, 0.02)
    assert "| yes |" in crosscheck.table(rows, 0.05)
