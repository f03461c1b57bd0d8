"""Running a stage entry point: user errors and Ctrl-C become one line and an exit code, not a traceback."""
from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from robust_cifar.cache import ensure_cache, project_cache_dir
from robust_cifar.errors import USER_ERROR_EXIT, ParamsError, UserError
from robust_cifar.params import LOADED, Params, changed_while_read
from robust_cifar.signals import Stopped, die_with_parent, ignore_stop_signals, signal_of, stop_on_signals


def timings() -> Path:
    """Each stage's last wall time on this machine, for the summary's provenance (not a DVC output: a
    timing is a fact about a run, not a result the pipeline reproduces)."""
    return project_cache_dir("timing")


def stage_name(argv: list[str]) -> str:
    """`train-baseline-0` for `python -m stages.train baseline 0`."""
    return "-".join([Path(argv[0]).stem, *argv[1:]])


def record_time(name: str, seconds: float) -> None:
    try:
        timings().mkdir(parents=True, exist_ok=True)
        (timings() / f"{name}.json").write_text(json.dumps({"stage": name, "seconds": round(seconds, 1),
                                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    except (OSError, UserError):
        pass   # a timing is nice to have; never fail a finished stage over it


def check_params_unchanged(loaded: list[tuple[Path, Params]]) -> None:
    """Fail a stage whose params.yaml values changed while it ran: DVC would record the new values beside outputs
    computed with the old (in dvc.lock and its run cache, which would then serve them for the new values)."""
    changed = changed_while_read(loaded)
    if changed:
        raise ParamsError(f"params.yaml changed while this stage ran ({changed}): its outputs were computed with the "
                          "values it read at the start, so DVC must not record them; run `dvc repro` again (edit "
                          "params.yaml between runs, or use `dvc exp run -S`)")


def after_a_workspace_experiment() -> str:
    """What a refusal adds under a `dvc exp run` in the workspace (DVC names the experiment in DVC_EXP_NAME and the
    project in DVC_ROOT, the stage's folder there; a queued or --temp run works in a copy): DVC wrote its -S values
    into params.yaml, often with the committed file's size and second, where `git status` does not show them."""
    root = os.environ.get("DVC_ROOT")
    if "DVC_EXP_NAME" not in os.environ or not root or Path(root).resolve() != Path.cwd().resolve():
        return ""
    return (" (`dvc exp run` left its -S values in params.yaml, where `git status` may not show them: "
            "`git show HEAD:params.yaml > params.yaml && git show HEAD:dvc.lock > dvc.lock && dvc checkout` puts the "
            "workspace back)")


def after_dvc_removed_the_outputs(persist: bool, experiment_hint: str) -> str:
    """What a refusal adds in a stage that DVC ran (DVC names it in DVC_STAGE) and whose outputs do not persist: DVC
    removed them before starting it. check_params refuses a bad value before that happens, but `dvc repro -s` and
    `--downstream` skip it, and a damaged input is the stage's own to find. Under a workspace `dvc exp run` the
    experiment's hint (`experiment_hint`, after_a_workspace_experiment's) covers this too."""
    stage = os.environ.get("DVC_STAGE")
    if not stage or persist or experiment_hint:
        return ""
    return (f" (DVC removed the outputs of {stage} before running it: `dvc checkout {stage}` puts back what dvc.lock "
            "records)")


def end_now() -> None:
    """Exit 0 at once, doing first what Python's own exit does that matters here: the atexit handlers (the params
    trace, logging's flush) and flushing stdout and stderr. Every output is written and closed by now. The rest of
    the interpreter's teardown took 0.8 to 1.6 s after a torch stage (train 1.6, summarize 1.3, evaluate 0.8 s on
    an AVX2 EPYC), a second of every stage's run, during which a Ctrl-C, ignored from the outputs on, was lost
    unsaid while DVC, which ignores it during a stage, went on to the next stage."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_stage(main: Callable[[list[str]], None], persist: bool = False) -> None:
    """Run a stage's `main` on its arguments. `persist`: its outputs are `persist: true` in dvc.yaml, so DVC leaves
    them in place when it runs the stage (tests/test_guards.py keeps the two in step)."""
    if {"-h", "--help"} & set(sys.argv[1:]):   # what it does, without running it (and replacing its outputs)
        doc = (getattr(sys.modules["__main__"], "__doc__", None) or "").strip()
        print(f"{doc}\n\nA stage of the pipeline: run it with `dvc repro` (dvc.yaml gives its arguments, deps, "
              "params and outputs; docs/pipeline.md says what each stage does).")
        return
    started = time.perf_counter()
    try:
        stop_on_signals()
        die_with_parent()
        ensure_cache()   # a cache folder that is a file or cannot be made: refused now, not in the middle of the work
        loaded_before = len(LOADED)
        main(sys.argv[1:])
        check_params_unchanged(LOADED[loaded_before:])
        ignore_stop_signals()   # its outputs are written: a signal now would only make DVC discard a finished stage
        record_time(stage_name(sys.argv), time.perf_counter() - started)
        end_now()
    except UserError as error:
        experiment = after_a_workspace_experiment()
        print(f"error: {error}{experiment}{after_dvc_removed_the_outputs(persist, experiment)}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT) from None
    except KeyboardInterrupt as interrupt:
        ignore_stop_signals()   # a second signal (a terminal's Ctrl-C and a tool passing it on) changes nothing
        signum = signal_of(interrupt)
        experiment = after_a_workspace_experiment()   # `dvc repro` would run the experiment's values as the workspace's
        print(f"interrupted ({Stopped(signum).name}): no output of this stage was written; rerun "
              + ("the same `dvc exp run` to go on" if experiment else "it with `dvc repro`") + experiment,
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Not SystemExit: after this handler had run, about 1 interrupted training in 5 still ended by
        # SIGINT (-2) at interpreter shutdown. Outputs are written atomically and partial files were
        # removed while the exception unwound, so nothing is left for shutdown to do.
        os._exit(Stopped(signum).exit_code)
