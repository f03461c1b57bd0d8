"""tools/restored.py: params.yaml put back after a tool's failed or stopped run, in the work tree and Git's index."""
import os
import subprocess

import pytest

from tools.restored import restored_on_failure


def git(folder, *arguments) -> str:
    return subprocess.run(["git", *arguments], cwd=folder, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def committed(tmp_path):
    """A Git work tree whose params.yaml is committed."""
    git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("knn:\n  k: 3\n")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "params")
    return tmp_path / "params.yaml"


def test_a_failed_run_leaves_params_yaml_byte_for_byte_with_its_times(tmp_path, capsys):
    path = tmp_path / "params.yaml"   # outside Git: the work tree alone
    path.write_text("knn:\n  k: 3\n")
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    with restored_on_failure(path):
        path.write_text("knn:\n  k: 0\n")     # what a refused `dvc exp run -S knn.k=0` leaves
    assert path.read_text() == "knn:\n  k: 3\n" and path.stat().st_mtime_ns == 2_000_000_000
    assert capsys.readouterr().err == f"{path} is as it was before the run (in the work tree)\n"
    with restored_on_failure(path) as outcome:
        path.write_text("knn:\n  k: 5\n")
        outcome.returncode = 0
    assert path.read_text() == "knn:\n  k: 5\n"


def test_what_dvcs_autostage_put_in_gits_index_is_put_back_too(committed, capsys):
    """`git checkout params.yaml`, the usual undo, brought the failed run's values back from the index."""
    with restored_on_failure(committed):
        committed.write_text("knn:\n  k: 0\n")
        git(committed.parent, "add", "params.yaml")   # core.autostage: DVC stages what it wrote
    assert git(committed.parent, "status", "--porcelain") == ""
    assert capsys.readouterr().err.endswith("is as it was before the run (in the work tree and Git's index)\n")


def test_an_edit_staged_before_the_run_stays_staged(committed):
    committed.write_text("knn:\n  k: 5\n")
    git(committed.parent, "add", "params.yaml")   # the user's own staged edit
    with restored_on_failure(committed):
        committed.write_text("knn:\n  k: 0\n")
        git(committed.parent, "add", "params.yaml")
    assert committed.read_text() == "knn:\n  k: 5\n"
    assert git(committed.parent, "status", "--porcelain") == "M  params.yaml\n"
    assert "k: 5" in git(committed.parent, "diff", "--cached")


def test_an_untracked_params_yaml_that_the_run_staged_is_untracked_again(tmp_path):
    git(tmp_path, "init", "-q")
    path = tmp_path / "params.yaml"
    path.write_text("knn:\n  k: 3\n")
    with restored_on_failure(path):
        git(tmp_path, "add", "params.yaml")
    assert git(tmp_path, "status", "--porcelain") == "?? params.yaml\n"


def test_the_lock_the_failed_run_rewrote_is_put_back_with_the_way_to_its_outputs(committed, capsys):
    """A failed preset left params.yaml restored but dvc.lock its own (core.autostage: staged), beside outputs
    DVC had removed: every stage stale, and a commit would record the run's lock with the old params."""
    lock = committed.parent / "dvc.lock"
    lock.write_text("stages: {}\n")
    git(committed.parent, "add", "dvc.lock")
    git(committed.parent, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "lock")
    with restored_on_failure(committed, lock=lock):
        committed.write_text("knn:\n  k: 0\n")
        lock.write_text("stages: {check_params: {}}\n")
        git(committed.parent, "add", "params.yaml", "dvc.lock")
    assert git(committed.parent, "status", "--porcelain") == ""
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{lock} is as it was before the run (in the work tree and Git's index); `dvc checkout` puts back the outputs "
        "the run removed")
    with restored_on_failure(committed, lock=committed.parent / "new.lock"):   # none before the run: none after
        (committed.parent / "new.lock").write_text("stages: {}\n")
    assert not (committed.parent / "new.lock").exists()
