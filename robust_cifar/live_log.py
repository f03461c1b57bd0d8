"""Per-epoch training metrics through dvclive: plots for `dvc plots show`, final values for `dvc exp show`,
and live updates in DVC Studio when it is connected."""
from __future__ import annotations

from pathlib import Path

# epoch-row key -> dvclive metric name (a "/" nests it in metrics.json and in plots/metrics/)
LOGGED = {"train_loss": "train/loss", "train_acc": "train/acc", "lr": "lr", "val_loss": "val/loss",
          "val_acc": "val/acc", "val_perturbed_acc": "val/perturbed_acc"}
# Wall times are left out: they differ on every run, and metrics.json is an output DVC hashes.


class EpochLog:
    """Logs each epoch's row at step = epoch; the plots and metrics.json are written as training goes."""

    def __init__(self, directory: str | Path):
        from dvclive import Live  # imported here: only the training stage needs it

        # dvcyaml=False: dvc.yaml declares the plots itself; save_dvc_exp=False: `dvc exp run`
        # (or `dvc repro`) owns the experiment, not the logger.
        self.live = Live(str(directory), dvcyaml=False, save_dvc_exp=False, report=None)

    def __call__(self, row: dict) -> None:
        self.live.step = row["epoch"]
        for key, name in LOGGED.items():
            if key in row:
                self.live.log_metric(name, row[key])
        self.live.make_summary()

    def close(self) -> None:
        self.live.end()
