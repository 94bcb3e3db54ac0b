"""Device, precision, seeding and process-group facts shared by training and evaluation."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain launch is rank 0 of 1."""
    return Dist(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(requested: str, dist: Dist = Dist()) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"train.device={requested} but no CUDA device is visible; use train.device=cpu or auto"
            )
        if requested == "cuda":
            requested = f"cuda:{dist.local_rank}"
    elif requested != "cpu":
        raise ValueError(f"train.device={requested!r} is not a device; use auto, cpu, cuda or cuda:N")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: without either, bf16 matmuls on CPU run ~100x slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def check_precision(device: torch.device, precision: Precision) -> None:
    if precision == Precision.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        raise ValueError(
            "train.precision=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16 flag in "
            "/proc/cpuinfo): "
            "its bf16 matmuls run about 100x slower than fp32 here; use train.precision=fp32"
        )


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA; fp32 is a no-op context."""
    if precision == Precision.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def flush_denormals() -> bool:
    """Subnormal floats flushed to zero (x86's FTZ and DAZ) for the rest of the process. Softmax
    attention under a strong bias (ALiBi's slope·distance, FoX's forget gates) takes exp() of logits
    far below the row's maximum, and on Intel CPUs every subnormal result costs a microcode assist:
    ALiBi trained at half `nope`'s speed, at its speed with the flush (a 2-core Xeon,
    experiments/benchmarks-2026-12-04). Values under 1.2e-38 become 0, which no loss or gradient
    can see. A thread takes the mode of the thread that creates it, so this runs at a job's start,
    before torch's first parallel region starts its worker threads; a no-op where unsupported.
    -> whether the CPU flushes now (recorded in the results' machine description)"""
    global DENORMALS_FLUSHED
    DENORMALS_FLUSHED = torch.set_flush_denormal(True)
    return DENORMALS_FLUSHED


DENORMALS_FLUSHED = False  # set by flush_denormals()


def machine_description(device: torch.device) -> dict:
    """Where a run's numbers were obtained, for its results file: the CPU (its model, cores, the
    threads torch used), the GPU if any, and torch's version."""
    described = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16() if device.type == "cpu" else None,
        "flush_denormal": DENORMALS_FLUSHED if device.type == "cpu" else None,
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Torch's generators; data order needs none (it is keyed by the batch index)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
