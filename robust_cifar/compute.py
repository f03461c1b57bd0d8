"""Where and how tensors are computed: device choice, bf16 autocast and channels_last."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


class DeviceError(ValueError):
    """A requested device that this machine does not have."""


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

    @classmethod
    def create(cls, device: str = "auto", fast: bool = True) -> "Compute":
        resolved = resolve_device(device)
        if resolved.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return cls(resolved, fast and bf16_supported(resolved))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.mixed_precision else torch.contiguous_format

    def autocast(self):
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def images(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW on the device -> float pixels in [0, 1] in the model's memory format."""
        return pixels_uint8.to(self.device, non_blocking=True).float().div_(255).contiguous(memory_format=self.memory_format)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{self.device} ({name}), {'bf16 autocast + channels_last' if self.mixed_precision else 'fp32'}"

