"""Per-epoch training metrics through dvclive: plots for `dvc plots show`, final values for `dvc exp show`,
and live updates in DVC Studio when it is connected."""
from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path

from robust_cifar.cache import hold, project_cache_dir
from robust_cifar.outputs import NO_SPACE, move_folder, no_space

# epoch-row key -> dvclive metric name (a "/" nests it in metrics.json and in plots/metrics/)
LOGGED = {"train_loss": "train/loss", "train_acc": "train/acc", "lr": "lr", "val_loss": "val/loss",
          "val_acc": "val/acc", "val_perturbed_acc": "val/perturbed_acc"}
# Wall times are left out: they differ on every run, and metrics.json is an output DVC hashes.
RUN = "run"   # the log's own run, in its params.yaml (read by reporting/curves.py)
LOGGED_MD5 = "logged_md5"   # there too, as the log closes: log_digest of what it logged


def log_digest(directory: Path) -> str:
    """The md5 of a training log's metrics.json and plots (paths and bytes): what ties them to its params.yaml, so
    another run's plots copied into this log are refused, not drawn as this run's curves."""
    digest = hashlib.md5(usedforsecurity=False)
    for path in sorted([directory / "metrics.json", *(directory / "plots").rglob("*")]):
        if path.is_file():
            digest.update(f"{path.relative_to(directory).as_posix()}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class EpochLog:
    """Logs each epoch's row at step = epoch; the plots and metrics.json are written as training goes."""

    def __init__(self, directory: str | Path):
        from dvclive import Live  # imported here: only the training stage needs it

        self.directory = Path(directory)
        # dvclive writes here while training runs; the folder replaces the stage's output only at the end,
        # so an interrupted run never leaves a half-written training log where the finished one was.
        self.in_progress = project_cache_dir("live") / self.directory.name
        # One training of a run at a time (a stage run by hand while DVC runs it): both would write this folder,
        # and the first to finish would move the other's half into the output.
        self.lock = hold(f"train@{self.directory.name}",
                         f"another training of {self.directory.name} is running in this project; two at once would "
                         "write one live log and one model")
        # What an interrupted training of the run left there (no other is running: the lock) would be carried
        # into this one's log, an output DVC hashes.
        if self.in_progress.is_dir() and not self.in_progress.is_symlink():
            shutil.rmtree(self.in_progress)
        else:
            self.in_progress.unlink(missing_ok=True)
        # dvcyaml=False: dvc.yaml declares the plots itself; save_dvc_exp=False: `dvc exp run`
        # (or `dvc repro`) owns the experiment, not the logger.
        with self.disk():
            self.live = Live(str(self.in_progress), dvcyaml=False, save_dvc_exp=False, report=None)

    @contextlib.contextmanager
    def disk(self):
        """dvclive's writes, where a full disk is one line and the partial log is removed (not a traceback)."""
        try:
            yield
        except OSError as error:
            if error.errno not in NO_SPACE:
                raise
            shutil.rmtree(self.in_progress, ignore_errors=True)
            raise no_space(self.in_progress) from None

    def describe(self, run: str, **facts) -> None:
        """Whose log it is (`<method>-<seed>`, which the curves stage checks) and facts about the run (device,
        torch version) in the log's params.yaml, for the summary."""
        with self.disk():
            self.live.log_params({RUN: run, **facts})

    def __call__(self, row: dict) -> None:
        self.live.step = row["epoch"]
        with self.disk():
            for key, name in LOGGED.items():
                if key in row:
                    self.live.log_metric(name, row[key])
            self.live.make_summary()

    def close(self) -> None:
        """Finish the log and move it into place; another training of the run may start after this."""
        with self.disk():
            self.live.end()
            self.live.log_params({LOGGED_MD5: log_digest(self.in_progress)})
        move_folder(self.in_progress, self.directory)   # across disks too, when the cache is on another
        self.lock.close()
