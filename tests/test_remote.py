"""Sharing a tiny run's models and metrics through a DVC remote.

The owner of a reproduced run adds a remote, commits the DVC metadata and pushes the cache; a
colleague gets everything with `git clone` + `dvc pull`, without retraining: every output is
byte-identical, `dvc status` is clean, `dvc repro` runs nothing and the metrics match.
Two remotes: a local directory, and S3 on a moto server bound to 127.0.0.1 (credentials only in
the environment, never in .dvc/config).
"""
from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.pipeline_project import METHODS, dvc, ran_stages, run, stale_stages

S3_BUCKET = "robust-cifar-shared"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def owner(reproduced_project, tmp_path) -> Path:
    """A private copy of the shared reproduced project (which must stay untouched)."""
    return Path(shutil.copytree(reproduced_project, tmp_path / "owner", symlinks=True))


def lock_outputs(project: Path) -> list[str]:
    """Every output dvc.lock records, as files (a directory output is expanded)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    files = set()
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = project / out["path"]
            if path.is_dir():
                files.update(str(f.relative_to(project)) for f in path.rglob("*") if f.is_file())
            else:
                files.add(out["path"])
    return sorted(files)


def metrics(project: Path) -> dict:
    return json.loads(dvc(project, "metrics", "show", "--json").stdout)


def share_and_pull(owner: Path, colleague: Path, remote: str, url: str, **options: str) -> None:
    """The owner pushes a run to a new default remote; a colleague clones and pulls it."""
    outputs = lock_outputs(owner)
    expected = {"reports/summary.md"} | {
        f"{folder}/{method}{suffix}.{ext}" for method in METHODS for folder, suffix, ext in (
            ("models", "-0", "pt"), ("reports/aggregate", "", "json"), ("data/embeddings", "-0", "npz"),
            ("reports/umap", "", "png"))}
    assert expected <= set(outputs), sorted(expected - set(outputs))

    dvc(owner, "remote", "add", "-d", remote, url)
    for option, value in options.items():
        dvc(owner, "remote", "modify", remote, option, value)
    # dvc.lock, .dvc/config and the .gitignore files DVC wrote; the outputs themselves stay out of git
    run(owner, "git", "add", "-A")
    run(owner, "git", "commit", "-qm", "share the run through a DVC remote")
    assert run(owner, "git", "status", "--porcelain").stdout == ""
    tracked = set(run(owner, "git", "ls-files").stdout.split())
    assert {"dvc.lock", ".dvc/config"} <= tracked and not tracked & set(outputs)
    dvc(owner, "push")

    run(owner.parent, "git", "clone", "-q", str(owner), str(colleague))
    assert not [path for path in outputs if (colleague / path).exists()]
    assert not (colleague / ".dvc" / "cache").exists()

    dvc(colleague, "pull")
    different = [path for path in outputs
                 if not (colleague / path).is_file() or not filecmp.cmp(owner / path, colleague / path, shallow=False)]
    assert different == []
    assert stale_stages(colleague) == set()
    repro = dvc(colleague, "repro")
    assert ran_stages(repro.stdout) == set(), repro.stdout
    shown = metrics(colleague)
    assert shown == metrics(owner)
    (workspace,) = shown.values()  # keyed by revision: "" is the workspace
    assert {path: "data" in entry for path, entry in workspace["data"].items()} == {"reports/metrics.json": True}, shown
    assert run(colleague, "git", "status", "--porcelain").stdout == ""


def test_local_directory_remote(owner, tmp_path):
    store = tmp_path / "remote-store"
    store.mkdir()
    share_and_pull(owner, tmp_path / "colleague", "shared", str(store))
    assert any(path.is_file() for path in store.rglob("*"))


@pytest.fixture
def s3_endpoint(monkeypatch, tmp_path):
    """A moto S3 server on 127.0.0.1 with one bucket; credentials only in the environment."""
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)  # dvc_env() copies os.environ into every dvc subprocess
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    # no ~/.aws files, no instance metadata lookups, no proxy for the loopback server
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])
        client.create_bucket(Bucket=S3_BUCKET)
        yield endpoint, client
    finally:
        server.stop()


def test_s3_remote(owner, tmp_path, s3_endpoint):
    endpoint, client = s3_endpoint
    share_and_pull(owner, tmp_path / "colleague", "s3remote", f"s3://{S3_BUCKET}/store", endpointurl=endpoint)

    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
            for item in page.get("Contents", [])]
    assert keys and all(key.startswith("store/") for key in keys)
    for project in (owner, tmp_path / "colleague"):
        config = (project / ".dvc" / "config").read_text()
        assert endpoint in config
        assert not any(secret in config for secret in (
            "testing", "access_key", "secret", "session_token", "credentialpath", "profile")), config
        assert not (project / ".dvc" / "config.local").exists()
