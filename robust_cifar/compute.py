"""Where and how tensors are computed: device, CPU threads, bf16 autocast and channels_last.

Each of these changes the bits of a result, so each is a param (`compute.device`, `compute.threads`,
`compute.fast`) that the stages it affects depend on, never a property of whichever machine runs the
stage: a value the machine cannot honour is refused (in check_params, before DVC deletes an output),
not quietly replaced (docs/reproducibility.md "What is bit-identical").
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch

from robust_cifar.errors import DeviceError
from robust_cifar.machine import cpu_description
from robust_cifar.params import BOOLEAN, Params, Rule, bounded_int


DEVICE = Rule(lambda v: isinstance(v, str) and (v in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", v) is not None),
              "cpu, cuda or cuda:N (no 'auto': the device changes the numbers, so it is set, not guessed)")
THREADS = bounded_int(1, 1024, "CPU threads per stage process (the count changes a CPU result's bits)")
# Environment variables that choose other CPU kernels (an instruction set, MKL's code path, oneDNN's math mode)
# and so change a result's bits where DVC cannot see them: refused, as a param the machine cannot honour is.
# (OMP_NUM_THREADS and MKL_NUM_THREADS are not: compute.threads sets the count every stage uses.)
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_CPU_ISA_HINTS",
                "DNNL_CPU_ISA_HINTS", "ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE", "MKL_CBWR",
                "MKL_ENABLE_INSTRUCTIONS")
# Set by tools.determinism alone, whose trainings write no file of the project: it may try another instruction set
# (ONEDNN_MAX_CPU_ISA) to see whether the kernels of one are what differs between runs, and (`--without-onednn`)
# bf16 autocast on a CPU without bf16 units, where PyTorch's own kernels compute it as on any other CPU.
KERNEL_ENV_ALLOWED = False
EMULATED_BF16_ALLOWED = False


@dataclass(frozen=True)
class ComputeConfig:
    device: str
    fast: bool
    eval_batch_size: int
    deterministic: bool
    cuda_graphs: bool
    threads: int

    @staticmethod
    def device_from_params(params: Params) -> str:
        return params.value("compute.device", DEVICE)

    @staticmethod
    def threads_from_params(params: Params) -> int:
        return params.value("compute.threads", THREADS)

    @classmethod
    def from_params(cls, params: Params) -> "ComputeConfig":
        return cls(device=cls.device_from_params(params), fast=params.value("compute.fast", BOOLEAN),
                   eval_batch_size=params.value("compute.eval_batch_size",
                                                bounded_int(1, 65_536, "images per inference batch")),
                   deterministic=params.value("compute.deterministic", BOOLEAN),
                   cuda_graphs=params.value("compute.cuda_graphs", BOOLEAN),
                   threads=cls.threads_from_params(params))

    def check_machine(self) -> None:
        """Refuse (DeviceError) what this machine cannot run as asked, instead of running it otherwise."""
        for name in () if KERNEL_ENV_ALLOWED else NUMERICS_ENV:
            if os.environ.get(name):
                raise DeviceError(f"{name}={os.environ[name]} is set: it makes the CPU run other kernels, so other bits "
                                  f"than params.yaml records; unset it (`unset {name}`) and run again")
        device = resolve_device(self.device)
        if self.fast and not bf16_supported(device):
            raise DeviceError("compute.fast = true asks for bf16 autocast, which this CPU has no bf16 units for "
                              f"({cpu_description()}): use `-S compute.fast=false` (fp32; its bits differ from a bf16 run)")

    def oversubscription(self, cores: int) -> str | None:
        """A warning when a CPU run asks for more threads than `cores`: allowed (the count is a param, so a run
        made with more threads is reproduced with as many), but no faster: on the 2-core EPYC a full-width step at 8
        threads ran as fast as at 2 (their OpenMP shares the cores within one process; docs/speed.md)."""
        if self.device != "cpu" or self.threads <= cores:
            return None
        return (f"warning: compute.threads = {self.threads} is more than the {cores} CPU cores this machine gives the "
                f"stages, which makes them no faster; keep it only to reproduce a run made with {self.threads} "
                f"threads (the count changes a result's bits), else set `-S compute.threads={cores}`")


def resolve_device(name: str) -> torch.device:
    """`auto` (the GPU where there is one) is for tools such as the benchmark; params name the device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"compute.device = {name!r} but this machine has no CUDA GPU: the full study is a GPU "
                              "job; on a CPU run the quick preset (`python -m tools.preset quick`) or set "
                              "`-S compute.device=cpu -S compute.fast=false`")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"compute.device = {name!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # On CPUs without bf16 matrix units autocast emulates bf16 and runs slower than fp32.
    return device.type == "cpu" and (EMULATED_BF16_ALLOWED or (torch.backends.mkldnn.is_available()
                                                               and torch.ops.mkldnn._is_mkldnn_bf16_supported()))


@dataclass(frozen=True)
class Compute:
    device: torch.device
    mixed_precision: bool   # bf16 autocast and channels_last
    cuda_graphs: bool = False   # training steps of fixed shape replayed as CUDA graphs (robust_cifar/training/step_graphs.py)

    @classmethod
    def create(cls, device: str = "auto", fast: bool = True, deterministic: bool = False,
               cuda_graphs: bool = False) -> "Compute":
        resolved = resolve_device(device)
        if resolved.type == "cuda":
            # cuDNN's fastest kernels are chosen per shape (benchmark) and some accumulate in a
            # nondeterministic order; `deterministic` trades that speed for identical reruns.
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cudnn.deterministic = deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            if deterministic:
                # cuBLAS reads this when CUDA first uses it, so only the environment can carry it (PyTorch's
                # "Reproducibility" notes); set only on request, and a value the user set is kept
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
        return cls(resolved, fast and bf16_supported(resolved), cuda_graphs and resolved.type == "cuda")

    @classmethod
    def from_config(cls, config: ComputeConfig) -> "Compute":
        """What the params ask for, exactly: refused where this machine cannot do it; CPU threads set."""
        config.check_machine()
        torch.set_num_threads(config.threads)
        return cls.create(config.device, config.fast, config.deterministic, config.cuda_graphs)

    @classmethod
    def fp32_from_params(cls, params: Params) -> "Compute":
        """The device and CPU threads the params name, in fp32, reading only those two keys (for the
        stages that score and draw and so must not rerun when a training setting changes)."""
        config = ComputeConfig(device=ComputeConfig.device_from_params(params), fast=False, eval_batch_size=1,
                               deterministic=False, cuda_graphs=False, threads=ComputeConfig.threads_from_params(params))
        return cls.from_config(config)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.mixed_precision else torch.contiguous_format

    def autocast(self, cache_enabled: bool = True):
        """bf16 autocast where enabled. A CUDA graph capture needs `cache_enabled=False` (the cache of
        cast weights must not outlive the capture); the casts are the same either way."""
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)

    def images(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW on the device -> float pixels in [0, 1] in the model's memory format."""
        return pixels_uint8.to(self.device, non_blocking=True).float().div_(255).contiguous(memory_format=self.memory_format)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return (f"{self.device} ({name}), {'bf16 autocast + channels_last' if self.mixed_precision else 'fp32'}"
                f"{', CUDA graphs' if self.cuda_graphs else ''}")

