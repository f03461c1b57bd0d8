"""Does a training give the same bytes every time on this machine? It trains one run again in separate
processes and, where two runs differ, names the first tensor that did.

    python -m tools.determinism angular                 # train@angular-0, 8 times
    python -m tools.determinism angular --runs 12 -S compute.fast=false -S train.epochs=2

Run it in a project whose split exists (`dvc repro split`): each run is `stages.train <method> <seed>`
in a fresh process, as under `dvc repro -f -s train@<method>-<seed>`, with the workspace's params (and
the -S overrides), but in a scratch folder: no file of the project is written. Each run records, in
order, a digest of every input given to the model from outside it, of every module's output and the
gradient reaching it (forward passes with gradients: training steps and attacks), and of the learning
rate and every parameter's gradient before each optimizer step; then the digest of the saved weights.
On a CPU, oneDNN names each kernel it runs (ONEDNN_VERBOSE=1): where two runs differ, the tool also says
whether oneDNN dispatched the same kernels in the same order (the difference then lies inside a kernel,
or outside oneDNN) or, if not, the first kernel it chose otherwise. With `--without-onednn` the trainings run
with oneDNN off (PyTorch's own kernels for every convolution, matrix product and batch norm; slower, and bf16
emulated as on any CPU, so `-S compute.fast=true` runs on a CPU without bf16 units too): runs that differ with
oneDNN and agree without it point at oneDNN's kernels.

Exit 0 when every run saved the same weights and traced the same tensors; 1 when they differ, after
naming the first differing tensor and the last identical one before it. The kernel to suspect lies
between the two: for an output, that module's forward (or the code that ran since the last identical
tensor); for a gradient, the backward of what consumed that output. Exit 2 for bad input; Ctrl-C, TERM
and HUP stop the running training and remove its scratch folder (one line, exit 128 + the signal); the
folder of a check killed with SIGKILL is removed by the next check. On a GPU,
tracing needs `-S compute.cuda_graphs=false`, and cuDNN's fastest kernels differ from run to run
unless `-S compute.deterministic=true`. On a tiny project (tests/pipeline_project.py) a run takes
seconds; the full study hashes gigabytes an epoch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.nn.modules import module as torch_module
from torch.optim.optimizer import register_optimizer_step_pre_hook

from robust_cifar.check_params import validate_params
from robust_cifar import compute as compute_module
from robust_cifar.compute import ComputeConfig
from robust_cifar.data.split import load_splits
from robust_cifar.errors import ParamsError, UserError
from robust_cifar.machine import cpu_description
from robust_cifar.model import load_model
from robust_cifar.params import SET_WITH_S, load_params, with_overrides, write_yaml
from robust_cifar.signals import die_with_parent, run_tool
from robust_cifar.training.methods.registry import known
from stages import paths

ROOT = Path(__file__).resolve().parents[1]
DIFFERENT_EXIT = 1
# oneDNN's verbose mode prints a line for each primitive it executes, naming its implementation; it changes no result
ONEDNN_VERBOSE = {"ONEDNN_VERBOSE": "1", "ONEDNN_VERBOSE_TIMESTAMP": "0"}
VERBOSE_PREFIX = "onednn_verbose,"
# What the scratch folder shares with the project: read only, as train@ reads it.
SHARED = (paths.RAW.parent, paths.SPLIT.parent)


def digest(tensor: torch.Tensor) -> str:
    """The exact bytes of a tensor (any dtype, layout or device), hashed."""
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return hashlib.blake2b(flat.view(torch.uint8).numpy().tobytes(), digest_size=8).hexdigest()


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in tensors_in(item)]
    return []


Record = tuple[int, str, str, str]   # (optimizer steps so far, what, module or parameter, digest)


@dataclass
class Tracer:
    """While entered, every module built and every optimizer step taken in this process is traced:
    `records` holds, in the order computed, a digest of the input of each module call made from outside
    the modules (batches, perturbed images), of each module's output and of the gradient that reaches it,
    and of each parameter group's learning rate and each parameter's gradient before a step. Forward passes
    without gradients (validation, inference) are not traced: they reach the weights only through the
    learning rate. Enter it before the model is built (module names come from their registration)."""
    records: list[Record] = field(default_factory=list)
    steps: int = 0
    _depth: int = 0                                # module calls under way
    # id(module) -> (parent, attribute name, module), id(parameter) -> (module, attribute name, parameter): each
    # entry holds its key's object, so no id is reused by another object while the tracer lives
    _parents: dict = field(default_factory=dict)
    _owners: dict = field(default_factory=dict)
    _handles: list = field(default_factory=list)

    def __enter__(self) -> "Tracer":
        self._handles = [
            torch_module.register_module_module_registration_hook(self._on_module),
            torch_module.register_module_parameter_registration_hook(self._on_parameter),
            torch_module.register_module_forward_pre_hook(self._on_call),
            torch_module.register_module_forward_hook(self._on_forward),
            register_optimizer_step_pre_hook(self._on_step),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def name(self, module: torch.nn.Module) -> str:
        parts = []
        while id(module) in self._parents:
            module, attribute, _ = self._parents[id(module)]
            parts.append(attribute)
        top = type(module).__name__
        return ".".join([top, *reversed(parts)])

    def record(self, what: str, name: str, tensor: torch.Tensor) -> None:
        self.records.append((self.steps, what, name, digest(tensor)))

    def _on_module(self, parent, attribute, child):
        if child is not None:
            self._parents[id(child)] = (parent, attribute, child)

    def _on_parameter(self, module, attribute, parameter):
        if parameter is not None:
            self._owners[id(parameter)] = (module, attribute, parameter)

    def _on_call(self, module, inputs):
        if self._depth == 0 and torch.is_grad_enabled():   # called from outside the modules: what it was given
            for tensor in tensors_in(inputs):
                self.record("input", self.name(module), tensor)
        self._depth += 1

    def _on_forward(self, module, inputs, output):
        self._depth -= 1
        if not torch.is_grad_enabled():
            return   # validation: it reaches the weights only through the learning rate, which is traced
        name = self.name(module)
        for tensor in tensors_in(output):
            self.record("output", name, tensor)
            if tensor.requires_grad:
                tensor.register_hook(lambda gradient, name=name: self.record("gradient", name, gradient))

    def _on_step(self, optimizer, args, kwargs):
        for number, group in enumerate(optimizer.param_groups):
            self.record("learning rate", f"group {number}", torch.as_tensor(group["lr"], dtype=torch.float64))
            for parameter in group["params"]:
                if parameter.grad is not None:
                    module, attribute, _ = self._owners.get(id(parameter), (None, "?", None))
                    owner = self.name(module) if module is not None else "unregistered"
                    self.record("parameter gradient", f"{owner}.{attribute}", parameter.grad)
        self.steps += 1


def describe(record: Record) -> str:
    steps, what, name, _ = record
    where = {"input": "the input of", "output": "the output of", "gradient": "the gradient reaching the output of",
             "parameter gradient": "the gradient of", "learning rate": "the learning rate of parameter"}[what]
    return f"{where} {name} before optimizer step {steps + 1:,}"


def first_difference(first: list[Record], other: list[Record]) -> Optional[int]:
    """The index of the first record where two traces differ (a shorter trace differs where it ends)."""
    for index, (a, b) in enumerate(zip(first, other)):
        if a != b:
            return index
    return None if len(first) == len(other) else min(len(first), len(other))


def state_digest(path: Path) -> str:
    model, _ = load_model(path)
    state = model.state_dict()
    hasher = hashlib.blake2b(digest_size=8)
    for key in sorted(state):
        hasher.update(key.encode())
        hasher.update(bytes.fromhex(digest(state[key])))
    return hasher.hexdigest()


def trace_one_run(method: str, seed: int, trace: Path, without_onednn: bool = False) -> None:
    """In a scratch folder (cwd): train@<method>-<seed> as the stage does, traced; the trace to `trace`."""
    from stages import train as train_stage

    die_with_parent()   # a scratch training outlives no check
    compute_module.KERNEL_ENV_ALLOWED = True   # its weights are no output of the project: an ISA may be tried
    if without_onednn:
        use_native_kernels()
    started = time.perf_counter()
    with Tracer() as tracer:
        train_stage.main([method, str(seed)])
    trace.write_text(json.dumps({"records": tracer.records, "weights": state_digest(paths.model(method, seed)),
                                 "seconds": time.perf_counter() - started}))


def use_native_kernels() -> None:
    """oneDNN off in this process: PyTorch's own CPU kernels compute what oneDNN would, bf16 included (emulated,
    as on a CPU without bf16 units), so a run's numerics no longer depend on oneDNN's choice of kernels."""
    torch.backends.mkldnn.enabled = False
    compute_module.EMULATED_BF16_ALLOWED = True


def onednn_kernels(lines) -> tuple[list[str], str]:
    """From oneDNN's verbose output: each primitive executed, in order (operation, implementation, propagation,
    memory formats, attributes, algorithm, problem; without its time), and the instruction set oneDNN uses."""
    kernels, isa = [], ""
    for line in lines:
        if not line.startswith(VERBOSE_PREFIX):
            continue
        fields = line.rstrip("\n").split(",")
        # onednn_verbose,[timestamp,]v1,<kind>,...: find the kind wherever a timestamp put it
        at = next((index for index, field in enumerate(fields[:4]) if field in ("primitive", "info")), None)
        if at is None:
            continue
        if fields[at:at + 2] == ["primitive", "exec"]:
            kernels.append(",".join(fields[at + 3:-1]))   # after the engine, without the time
        elif fields[at:at + 2] == ["info", "cpu"] and len(fields) > at + 2 and fields[at + 2].startswith("isa:"):
            isa = fields[at + 2].removeprefix("isa:")
    return kernels, isa


@dataclass
class Run:
    records: list[Record]
    weights: str
    seconds: float
    kernels: list[str] = field(default_factory=list)   # what oneDNN executed, in order
    isa: str = ""

    @classmethod
    def read(cls, path: Path, onednn_log: Path | None = None) -> "Run":
        data = json.loads(path.read_text())
        kernels, isa = [], ""
        if onednn_log is not None and onednn_log.is_file():
            with onednn_log.open(errors="replace") as lines:
                kernels, isa = onednn_kernels(lines)
        return cls([tuple(record) for record in data["records"]], data["weights"], data["seconds"], kernels, isa)


def scratch_folder(project: Path, folder: Path, params: dict) -> None:
    """What `stages.train` reads, in `folder`: params.yaml as given, the project's raw data and split linked."""
    write_yaml(params, folder / "params.yaml")
    for shared in SHARED:
        (folder / shared).parent.mkdir(parents=True, exist_ok=True)
        (folder / shared).symlink_to((project / shared).resolve(), target_is_directory=True)


def shared_state(project: Path) -> dict[str, tuple[int, int, int]]:
    """What the runs read from the project (its raw data and split): each file's size, change time and inode,
    which a `dvc repro`, `dvc checkout` or copy in the workspace changes."""
    return {str(path): (stat.st_size, stat.st_mtime_ns, stat.st_ino)
            for shared in SHARED for path in sorted((project / shared).rglob("*")) if path.is_file()
            for stat in [path.stat()]}


SCRATCH = "determinism-{pid}-"   # each training's scratch folder in the temporary folder, named after this check
SCRATCH_PID = re.compile(re.escape(SCRATCH).replace(re.escape("{pid}"), r"(\d+)"))   # its pid, read back


def abandoned_scratch(parent: Path | None = None) -> list[Path]:
    """The scratch folders of checks no longer running: one killed by SIGKILL (or the machine's end) could not
    remove its own, which holds a training's verbose log (megabytes on a long training)."""
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    found = []
    for folder in parent.glob(SCRATCH.format(pid="*") + "*"):
        pid = SCRATCH_PID.match(folder.name)
        if pid and folder.is_dir() and not process_alive(int(pid[1])):
            found.append(folder)
    return found


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        pass
    return True


def run_in_scratch(project: Path, params: dict, method: str, seed: int, folder: Path,
                   without_onednn: bool = False) -> Run:
    scratch_folder(project, folder, params)
    trace, onednn_log = folder / "trace.json", folder / "stdout.log"
    env = {**os.environ, **ONEDNN_VERBOSE,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with onednn_log.open("w") as stdout:   # a file: a long training's verbose lines run to megabytes
        command = [sys.executable, "-m", "tools.determinism", "--trace-to", str(trace), method, str(seed),
                   *(["--without-onednn"] if without_onednn else [])]
        result = subprocess.run(command, cwd=folder, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        said = [line for line in onednn_log.read_text(errors="replace").splitlines() + result.stderr.splitlines()
                if line.strip() and not line.startswith(VERBOSE_PREFIX)]
        raise UserError(f"a traced training of {method}-{seed} failed (exit {result.returncode}): "
                        f"{(said or ['no output'])[-1]}")
    return Run.read(trace, onednn_log)


def compare(runs: list[Run]) -> list[str]:
    """Lines saying how the runs differ from the first (and whether oneDNN's dispatch did); empty when every
    run is the same."""
    lines = []
    for number, run in enumerate(runs[1:], start=2):
        index = first_difference(runs[0].records, run.records)
        if index is None and run.weights == runs[0].weights:
            continue
        if index is None:
            lines.append(f"run {number}: every traced tensor as in run 1, but other saved weights "
                         "(an untraced step differs: the optimizer's update or the checkpoint)")
        else:
            agreed = f"after {index:,} identical tensors" + (f" (the last: {describe(runs[0].records[index - 1])})"
                                                             if index else "")
            if index >= min(len(runs[0].records), len(run.records)):
                lines.append(f"run {number}: its trace has {len(run.records):,} tensors, run 1's "
                             f"{len(runs[0].records):,}, {agreed}")
            else:
                lines.append(f"run {number}: first differs at {describe(run.records[index])}, {agreed}")
        lines.append(f"  {dispatch(runs[0].kernels, run.kernels)}")
    return lines


def dispatch(first: list[str], other: list[str]) -> str:
    """Whether oneDNN ran the same kernels, in the same order, in two runs; if not, the first it chose otherwise."""
    if not first and not other:
        return "oneDNN ran no kernel (or its verbose mode is off): its dispatch cannot be compared"
    index = first_difference(first, other)
    if index is None:
        return (f"oneDNN ran the same {len(first):,} kernels in the same order in both: the difference lies inside "
                "a kernel, or outside oneDNN")
    if index >= min(len(first), len(other)):
        return f"oneDNN ran {len(other):,} kernels, run 1 {len(first):,}, the first {index:,} the same"
    return f"oneDNN chose another kernel at call {index + 1:,}: run 1 ran `{first[index]}`, this run `{other[index]}`"


def check_project(settings: list[str], method: str, seed: int) -> dict:
    """The params the runs use (the workspace's, with the overrides); refuses (UserError) what the check_params
    stage or the training would refuse, and a run that is no stage of the project, before any training."""
    params = load_params()
    if settings:
        params = with_overrides(params, settings, set_with=SET_WITH_S)
    validate_params(params)
    if known(method) not in params.method_names():
        raise ParamsError(f"`methods` = {params.method_names()} lacks {method!r}: train@{method}-{seed} is no stage of "
                          f"this project; add it with -S 'methods=[...]'")
    if seed not in params.train_seeds():
        raise ParamsError(f"seed {seed} is not in `seeds.train` = {params.train_seeds()}: train@{method}-{seed} is no "
                          f"stage of this project; pick one of them, or add it with -S 'seeds.train=[...]'")
    compute = ComputeConfig.from_params(params)
    compute.check_machine()   # first: on a machine without a GPU, that is the one thing to say
    if compute.cuda_graphs and compute.device.startswith("cuda"):
        # a graph's hooks run once, at capture, and a digest's copy to the host cannot be captured
        raise ParamsError("a training replayed as CUDA graphs cannot be traced: add `-S compute.cuda_graphs=false` "
                          "(the steps then run one kernel at a time, FGM on the gated rows only)")
    load_splits(paths.RAW, paths.SPLIT)
    return params.raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", help="a method of params.yaml, e.g. angular")
    parser.add_argument("seed", nargs="?", type=int, default=0, help="the training seed (default 0)")
    parser.add_argument("--runs", type=int, default=8, help="trainings to compare (default 8; at least 2)")
    parser.add_argument("-S", "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override, as `dvc exp run -S` takes it")
    parser.add_argument("--without-onednn", action="store_true",
                        help="train with oneDNN off: PyTorch's own kernels (bf16 emulated, so compute.fast=true runs "
                             "on any CPU); runs that then agree point at oneDNN's kernels")
    parser.add_argument("--trace-to", type=Path, help=argparse.SUPPRESS)   # one traced run, in its scratch folder
    args = parser.parse_intermixed_args(argv)   # the seed may follow an -S
    if args.trace_to is not None:
        trace_one_run(args.method, args.seed, args.trace_to, args.without_onednn)
        return 0
    if args.runs < 2:
        parser.error("--runs must be at least 2: a determinism check compares trainings")
    if args.seed < 0:
        parser.error("the seed must be a whole number >= 0")

    compute_module.KERNEL_ENV_ALLOWED = True   # the trainings write nothing of the project: ONEDNN_MAX_CPU_ISA may be tried
    if args.without_onednn:
        use_native_kernels()   # as its trainings will: check_project's machine check then allows emulated bf16
    params = check_project(args.settings, args.method, args.seed)
    project = Path.cwd()
    run_name = f"train@{paths.run_name(args.method, args.seed)}"
    print(f"{run_name}: {args.runs} trainings in separate processes on {cpu_description()}, torch {torch.__version__}"
          f"{', oneDNN off' if args.without_onednn else ''}", flush=True)
    for folder in abandoned_scratch():
        shutil.rmtree(folder, ignore_errors=True)
    runs, inputs = [], shared_state(project)
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix=SCRATCH.format(pid=os.getpid())) as folder:
            runs.append(run_in_scratch(project, params, args.method, args.seed, Path(folder), args.without_onednn))
        now = shared_state(project)
        if now != inputs:   # the runs would differ for their inputs, not for a kernel
            changed = next(path for path in sorted(set(inputs) | set(now)) if inputs.get(path) != now.get(path))
            raise UserError(f"{Path(changed).relative_to(project)} changed during run {number} (a `dvc repro`, "
                            "`dvc checkout` or copy in this workspace?): the runs read other inputs; run the check "
                            "again while nothing else changes the project")
        print(f"run {number}: weights {runs[-1].weights}, {len(runs[-1].records):,} tensors traced, "
              f"{len(runs[-1].kernels):,} oneDNN kernels run{f' ({runs[-1].isa})' if runs[-1].isa else ''}, "
              f"{runs[-1].seconds:.1f} s", flush=True)
    differences = compare(runs)
    results = len({(tuple(run.records), run.weights) for run in runs})
    if not differences:
        print(f"{run_name}: one result in {args.runs} runs: bit-identical on this machine")
        return 0
    print(f"{run_name}: {results} different results in {args.runs} runs")
    for line in differences:
        print(line)
    if not args.without_onednn and any(run.kernels for run in runs):
        print(next_split(argv if argv is not None else sys.argv[1:]))
    return DIFFERENT_EXIT


def next_split(argv: list[str]) -> str:
    """What to run next to tell oneDNN's kernels (and among them its AMX ones) from the rest."""
    again = "python -m tools.determinism " + shlex.join(argv)
    return (f"next: `{again} --without-onednn` (runs that then agree point at oneDNN's kernels), and "
            f"`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 {again}` (at its AMX kernels, on a CPU with AMX: "
            "docs/reproducibility.md names a known lead)")


if __name__ == "__main__":   # TERM and HUP as Ctrl-C: the running training is stopped and its scratch folder removed
    run_tool(main, stopped_line="no file of the project was written")
