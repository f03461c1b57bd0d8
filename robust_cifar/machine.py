"""Which CPU this is, in the words a reader needs to judge whether a CPU result can be reproduced."""
from __future__ import annotations

import os
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")   # CPU flags of bf16 matrix units: bf16 autocast pays only with them
# How torch's OpenMP threads wait for each other: asleep, not spinning (libgomp's default), so that processes side by
# side (concurrent_repro's stages, sweep workers, a stage beside the test suite) do not take the cores from the
# threads they wait for. Two 2-thread trainings on 2 cores ran at 20 img/s each, against 10 spinning; alone, or
# with more threads than cores in one process, the speed is the same; the bits are the same (docs/speed.md).
OMP_WAIT = ("OMP_WAIT_POLICY", "PASSIVE")


def threads_wait_asleep() -> None:
    """OMP_WAIT_POLICY=PASSIVE for this process and those it starts, unless the environment says otherwise.
    OpenMP reads it once, when torch loads it: call this before anything imports torch."""
    os.environ.setdefault(*OMP_WAIT)


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """'AMD EPYC, 2 cores, bf16 units: avx512_bf16' or '..., bf16 units: none (avx2)': CPUs differ in
    their float kernels, so a CPU result is reproduced bit for bit only on the same kind of CPU."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "unknown"
    fields = [line.split(":", 1) for line in text.splitlines() if ":" in line]
    names = [value.strip() for key, value in fields if key.strip() == "model name"]
    flags = next((value.split() for key, value in fields if key.strip() == "flags"), [])
    units = [flag for flag in BF16_FLAGS if flag in flags]
    vector = next((flag for flag in ("avx512f", "avx2") if flag in flags), "no avx2")
    return (f"{names[0] if names else 'unknown'}, {len(names)} cores, bf16 units: "
            f"{', '.join(units) if units else f'none ({vector})'}")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: what a container or `taskset` leaves it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
