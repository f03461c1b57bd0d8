"""Many machines: one Ray task per experiment, each cloning from the Git remote and pushing back.

A task (steps.run_remote) clones the Git remote at the driver's commit into node-local scratch,
uses a DVC cache shared by the tasks of its node, runs `dvc exp run --pull -n <name> -S ...`
(outputs of unchanged stages come from the DVC remote) and `dvc exp push <git remote> <name>`
(the experiment's git ref to the Git remote, its outputs to the DVC remote). The driver then
`dvc exp pull`s the experiments that succeeded, so its `dvc exp show` lists them.

Ray is an optional extra (`pip install ray==2.60.0`); every node needs this project's
requirements (dvc, torch, ...) in the Python that runs its Ray workers, and git.
"""
from __future__ import annotations

from pathlib import Path

from tools.sweep import steps
from tools.sweep.grid import Experiment, SweepError
from tools.sweep.local import Progress


def import_ray():
    try:
        import ray
    except ImportError as error:
        raise SweepError("--ray needs Ray, an optional extra: pip install ray==2.60.0 "
                         "(on the driver and on every node of the cluster)") from error
    return ray


def run_on_ray(address: str, experiments: list[Experiment], git_url: str, commit: str, dvc_remote: str,
               force: bool, threads: dict[str, int], cpus: float | None, gpus: float | None, workdir: str,
               logs: Path, progress: Progress) -> list[steps.Outcome]:
    """Each experiment a Ray task reserving `cpus` CPUs (default: the `threads` it runs, by name) and `gpus` GPUs."""
    ray = import_ray()
    from ray import cloudpickle
    # the task travels by value: a node needs Ray, dvc and git, not this checkout on its sys.path
    cloudpickle.register_pickle_by_value(steps)
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    try:
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        counts = sorted({cpus} if cpus else set(threads.values()))
        progress.say(f"ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g}"
                     f" GPUs in the cluster; each experiment takes {' or '.join(f'{n:g}' for n in counts)} CPU(s)"
                     f"{'' if cpus else ' (its compute.threads)'} and {gpus:g} GPU(s)")
        task = ray.remote(steps.run_remote)
        pending = {}
        for experiment in experiments:
            spec = {"name": experiment.name, "set_params": experiment.set_params(), "git_url": git_url,
                    "commit": commit, "workdir": workdir, "dvc_remote": dvc_remote, "force": force,
                    "threads": threads[experiment.name], "gpus": gpus}
            reserved = cpus or threads[experiment.name]
            pending[task.options(num_cpus=reserved, num_gpus=gpus, max_retries=0).remote(spec)] = experiment
        outcomes: dict[str, steps.Outcome] = {}
        while pending:
            try:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
            except KeyboardInterrupt:
                # Ray interrupts each task's main thread, where run_logged stops its `dvc exp run` and stage
                for reference in pending:
                    ray.cancel(reference)
                raise
            experiment = pending.pop(ready)
            try:
                outcome = steps.Outcome(**ray.get(ready))
            except Exception as error:  # noqa: BLE001 - a lost node or a dead worker fails this experiment only
                outcome = steps.Outcome(experiment.name, False, 0.0, "ray", "", f"the Ray task failed: {error}",
                                        f"{type(error).__name__}: {error}\n")
            log = logs / f"{experiment.name}.log"
            log.write_text(outcome.log_text)
            outcome.log = str(log)
            outcomes[experiment.name] = outcome
            progress.finished(outcome)
        return [outcomes[experiment.name] for experiment in experiments]
    finally:
        ray.shutdown()
