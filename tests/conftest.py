"""Shared fixtures: one reproduced tiny pipeline for every end-to-end test of the session (of each
pytest-xdist worker)."""
import os

import pytest
import torch

from tests.pipeline_project import ALL_STAGES, create_tiny_project, dvc, ran_stages, trace_env, warm_umap_cache

END_TO_END_FIXTURE = "reproduced_project"
# `-n auto`: each worker reproduces its own tiny pipeline, and the slow tests are few; more workers gain nothing
MAX_WORKERS = 4
CPUS = os.cpu_count() or 1


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`pytest -n auto`: a worker per CPU (CPUS: os.cpu_count(), not pytest-xdist's physical cores: the tiny
    pipeline's stages and DVC run on one thread each), at most MAX_WORKERS. PYTEST_XDIST_AUTO_NUM_WORKERS,
    if set, decides instead (None leaves it to pytest-xdist)."""
    if not os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return min(MAX_WORKERS, CPUS)


def pytest_configure(config):
    """Under pytest-xdist (`-n auto`), each worker's torch takes its share of the cores, so the workers'
    in-process tests do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, CPUS // workers))


def pytest_collection_modifyitems(items):
    """Every test that needs the reproduced tiny pipeline is slow: `pytest -m "not slow"` is the quick loop."""
    for item in items:
        if END_TO_END_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory):
    """A committed copy of the project whose tiny pipeline has been reproduced once.

    Tests that change it must restore it (or work on a copy): it is shared.
    """
    project = create_tiny_project(tmp_path_factory.mktemp("pipeline") / "project")
    warming = warm_umap_cache()
    try:
        result = dvc(project, "repro", env=trace_env(project))
    finally:
        if warming:
            warming.wait()
    assert ran_stages(result.stdout) == ALL_STAGES, result.stdout
    return project


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions: one thread is fastest, and immune to other processes on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
