"""Where and how tensors are computed: device choice, bf16 autocast and channels_last."""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch

from robust_cifar.errors import DeviceError
from robust_cifar.params import BOOLEAN, Params, Rule, bounded_int


DEVICE = Rule(lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v) is not None),
              "auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class ComputeConfig:
    device: str
    fast: bool
    eval_batch_size: int
    deterministic: bool
    cuda_graphs: bool

    @staticmethod
    def device_from_params(params: Params) -> str:
        return params.value("compute.device", DEVICE)

    @classmethod
    def from_params(cls, params: Params) -> "ComputeConfig":
        return cls(device=cls.device_from_params(params), fast=params.value("compute.fast", BOOLEAN),
                   eval_batch_size=params.value("compute.eval_batch_size",
                                                bounded_int(1, 65_536, "images per inference batch")),
                   deterministic=params.value("compute.deterministic", BOOLEAN),
                   cuda_graphs=params.value("compute.cuda_graphs", BOOLEAN))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"compute.device = {name!r} but this machine has no CUDA GPU; "
                              "use `-S compute.device=auto` (or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"compute.device = {name!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # On CPUs without bf16 matrix units autocast emulates bf16 and runs slower than fp32.
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@dataclass(frozen=True)
class Compute:
    device: torch.device
    mixed_precision: bool   # bf16 autocast and channels_last
    cuda_graphs: bool = False   # training steps of fixed shape replayed as CUDA graphs (robust_cifar/step_graphs.py)

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
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
        return cls(resolved, fast and bf16_supported(resolved), cuda_graphs and resolved.type == "cuda")

    @classmethod
    def from_config(cls, config: ComputeConfig) -> "Compute":
        return cls.create(config.device, config.fast, config.deterministic, config.cuda_graphs)

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

