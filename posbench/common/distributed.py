"""Multi-process training under torchrun: process group set-up and the few collectives the loop needs.

One process (no torchrun) is world size 1 and every function here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from posbench.common.runtime import Dist


def is_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def adopt_slurm_environment() -> None:
    """Under the SLURM launcher with several tasks per job, export torch.distributed's
    variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) from SLURM's, via submitit."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "RANK" not in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


def hydra_overrides_for_rank() -> list[str]:
    """Ranks other than 0 keep Hydra's files out of the run folder (only rank 0 writes there)."""
    if rank_from_env() == 0:
        return []
    scratch = os.path.join(tempfile.gettempdir(), f"posbench-rank{rank_from_env()}-{os.getpid()}")
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=stdout"]


@contextlib.contextmanager
def process_group(layout: Dist, device: torch.device) -> Iterator[None]:
    """NCCL on CUDA, gloo on CPU; torn down however the job ends."""
    if layout.world_size == 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(minutes=60))
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_across_ranks(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank; every rank gets the same answer."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_from_main(obj: Any) -> Any:
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def wrap_ddp(model: torch.nn.Module, device: torch.device, all_used: bool = True) -> torch.nn.Module:
    """DDP around ``model``; ``all_used=False`` when a forward leaves some parameters without a
    gradient (a per-layer schedule's members hold parameters for layers they do not run)."""
    if not dist.is_initialized():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=not all_used
    )


def no_sync(model: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()
