"""Process placement (one process or torchrun) and rank-0 logging."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .config import TrainConfig

__all__ = ["Runtime", "barrier", "log", "setup_runtime"]


@dataclass
class Runtime:
    """Process placement: rank, world size, device, autocast settings."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world > 1


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Read torchrun's environment, start the process group, pick device and AMP dtype."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if not cuda and world > 1:
        # Share the cores instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    use_amp = cfg.amp == "on" or (cfg.amp == "auto" and cuda)
    amp_dtype = (torch.float16 if cuda else torch.bfloat16) if use_amp else None
    return Runtime(rank, world, local_rank, device, amp_dtype)


def barrier(rt: Runtime) -> None:
    """Wait for every process (a no-op on one process)."""
    if rt.distributed:
        dist.barrier()


def log(rt: Runtime, msg: str) -> None:
    """Print on rank 0 only (through tqdm so bars are not broken)."""
    if rt.main:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stdout)

