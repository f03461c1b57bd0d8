"""The training step replayed as a CUDA graph: one launch instead of hundreds.

At batch 256 the eager ResNet18 step is launch-bound on an H100/H200 (the GPU waits between small
kernels); replaying the captured baseline step ran at 2.16x the eager rate on an H200 (54,406 vs
25,199 img/s, results/clean-gap-h200/). A graph replays fixed shapes at fixed addresses, so:

- each batch size gets its own graph (an epoch's short last batch a second one), captured after a
  few eager steps of that size (cuDNN picks its kernels, the optimizer creates its momentum);
- inputs are copied into the graph's own buffers, and the loss and outputs it returns are
  overwritten by the next replay (read them before the next step, as the training loop does);
- the learning rate is a tensor on the device that the scheduler changes in place
  (`tensor_learning_rate`, `keep_learning_rate_tensor`), so a graph sees every cut;
- random draws from a generator of the caller's (the training perturbations) are fresh at each
  replay only if the graph knows that generator (`generators`); dropout's default one it knows.

Only steps with fixed shapes and no host reads qualify: a method that perturbs its batches runs
FGM on every row of a graphed step (`apply_perturbations(fixed_shape=True)`), not on the rows its
gate hit, a shape that changes from step to step. The eager step is otherwise the same code.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from robust_cifar.errors import DeviceError

StepFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]   # (uint8 pixels, labels) -> (loss, outputs)

# Eager steps of a batch size before its graph is captured (PyTorch's whole-network recipe uses 3).
WARMUP_STEPS = 3


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    pixels: Tensor
    labels: Tensor
    loss: Tensor
    outputs: Tensor


class GraphedSteps:
    """Calls `step` eagerly for the first WARMUP_STEPS batches of each size, then replays its graph."""

    def __init__(self, step: StepFn, warmup_steps: int = WARMUP_STEPS, generators: Sequence[torch.Generator] = ()):
        self.step = step
        self.warmup_steps = warmup_steps
        self.generators = tuple(generators)
        self.graphs: dict[int, _Captured] = {}
        self.eager_steps: Counter[int] = Counter()
        self.side_stream = torch.cuda.Stream()

    def __call__(self, pixels: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        size = len(labels)
        captured = self.graphs.get(size)
        if captured is None:
            if self.eager_steps[size] < self.warmup_steps:
                self.eager_steps[size] += 1
                return self._eager_on_side_stream(pixels, labels)
            captured = self.graphs[size] = self._capture(pixels, labels)
        captured.pixels.copy_(pixels)
        captured.labels.copy_(labels)
        captured.graph.replay()
        return captured.loss, captured.outputs

    def _eager_on_side_stream(self, pixels: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        # PyTorch's recipe warms up on a side stream; waiting on the main stream first also keeps
        # the side stream from reusing memory the main stream may still be reading
        main = torch.cuda.current_stream()
        self.side_stream.wait_stream(main)
        with torch.cuda.stream(self.side_stream):
            loss, outputs = self.step(pixels, labels)
        main.wait_stream(self.side_stream)
        return loss, outputs

    def _capture(self, pixels: Tensor, labels: Tensor) -> _Captured:
        static_pixels, static_labels = pixels.clone(), labels.clone()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        register_generators(graph, self.generators)
        try:
            with torch.cuda.graph(graph):
                loss, outputs = self.step(static_pixels, static_labels)
        except RuntimeError as error:
            raise DeviceError(f"CUDA graph capture of the training step failed ({str(error).splitlines()[0]}); "
                              "train eagerly with `-S compute.cuda_graphs=false`") from None
        return _Captured(graph, static_pixels, static_labels, loss, outputs)


def register_generators(graph: "torch.cuda.CUDAGraph", generators: Sequence[torch.Generator]) -> None:
    """Make each replay draw fresh numbers from `generators` (PyTorch 2.4 to 2.12 need this before
    capture; from 2.13 a graph registers a generator on first use and the call is a deprecated no-op)."""
    register = getattr(graph, "register_generator_state", None)
    if register is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        for generator in generators:
            register(generator)


def tensor_learning_rate(lr: float, device: torch.device) -> Tensor:
    """The learning rate as a 0-d float32 tensor, for an optimizer whose step is captured."""
    return torch.tensor(lr, dtype=torch.float32, device=device)


def keep_learning_rate_tensor(optimizer: torch.optim.Optimizer) -> None:
    """After a scheduler step: make every param group's lr the tensor the optimizer was built with
    (`optimizer.defaults["lr"]`), holding the current value.

    Schedulers of recent PyTorch fill a tensor lr in place; older ones assign a float, which a
    captured step would never read.
    """
    lr = optimizer.defaults["lr"]
    for group in optimizer.param_groups:
        if group["lr"] is not lr:
            lr.fill_(float(group["lr"]))
            group["lr"] = lr
