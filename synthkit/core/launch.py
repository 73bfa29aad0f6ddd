"""`--shard auto`: the shard (and GPU) that a launcher gives this process.

- torchrun or `accelerate launch`: RANK, WORLD_SIZE, LOCAL_RANK; the process uses cuda:LOCAL_RANK when
  the device is auto and CUDA is there. Every rank writes its shard beside --out, all wait at a barrier
  (torch.distributed, gloo on CPU and nccl on CUDA, used for nothing else), and rank 0 merges the shards
  into --out. A rank that fails never reaches the barrier: torchrun stops the job and nothing is merged.
- a SLURM array: SLURM_ARRAY_TASK_ID (counted from SLURM_ARRAY_TASK_MIN) of SLURM_ARRAY_TASK_COUNT;
- a SLURM step (srun, SLURM_STEP_ID set): SLURM_PROCID of SLURM_NTASKS.
Under SLURM every task writes its shard beside --out; a dependent job merges them (`synthkit merge`).
Without a launcher, auto means the whole job (1/1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import UserError
from .jobs import Asked, check_output, parse_shard, shard_range
from .paths import shard_path


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a launched job."""

    launcher: str  # torchrun, slurm-array, slurm-step or none
    rank: int = 0
    world: int = 1
    local_rank: int | None = None

    @property
    def shard(self) -> str:
        return f"{self.rank}/{self.world}" if self.world > 1 else ""


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"--shard auto: ${name} is '{env[name]}', not a number") from None


def detect(env: Mapping[str, str] | None = None) -> Launch:
    """The launcher this process runs under, from its environment."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else None
        return Launch("torchrun", _int(env, "RANK"), _int(env, "WORLD_SIZE"), local)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        return Launch("slurm-array", _int(env, "SLURM_ARRAY_TASK_ID") - first, _int(env, "SLURM_ARRAY_TASK_COUNT"))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and env.get("SLURM_STEP_ID", "batch") not in ("batch", "extern"):
        # a step started by srun; the batch script itself (no step id, or "batch") is one process, not a shard
        return Launch("slurm-step", _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"))
    return Launch("none")


def launch_device(launch: Launch, device: str) -> str:
    """cuda:LOCAL_RANK for a torchrun rank when the device is auto and CUDA is there; else the device asked for."""
    import torch

    from .device import pick_device

    resolved = pick_device(device)
    if launch.local_rank is not None and device in ("auto", "cuda") and resolved.type == "cuda":
        return f"cuda:{launch.local_rank % torch.cuda.device_count()}"
    return str(resolved)


def launched(device: str) -> tuple[Launch, str]:
    """Where the launcher puts this process, and the device it uses there (`--shard auto`)."""
    launch = detect()
    return launch, launch_device(launch, device)


def resolve_shard(shard: str, device: str) -> tuple[str, str]:
    """--shard for jobs whose outputs are separate files: the shard to do ('' for all) and the device to use;
    auto asks the launcher (torchrun, SLURM) and takes this rank's GPU."""
    if shard != "auto":
        if shard:
            parse_shard(shard)
        return shard, device
    launch, dev = launched(device)
    return launch.shard, dev


Item = TypeVar("Item")


@dataclass(frozen=True)
class ItemShard(Generic[Item]):
    """The contiguous slice [first, stop) of a job's `total` items that shard `shard` does, on `device`."""

    items: list[Item]
    first: int
    stop: int
    total: int
    shard: str
    device: str


def shard_items(items: Sequence[Item], shard: str, device: str) -> ItemShard[Item]:
    """This process's items of a job whose items each write their own output (train's classifiers): shard 'i/n'
    does a contiguous slice of them (jobs.shard_range), auto the launcher's shard on its GPU, '' all of them."""
    part, dev = resolve_shard(shard, device)
    first, stop = shard_range(len(items), part)
    return ItemShard(list(items[first:stop]), first, stop, len(items), part, dev)


def run_sharded(
    job: Callable[[Path, str, str], Any],
    out: Path,
    shard: str,
    device: str,
    merge: Callable[[Sequence[Path], Path], Any],
    overwrite: bool = False,
    resume: bool = False,
    say: Callable[[str], None] = print,
    inputs: Sequence[str | Path | None] = (),
    asked: Callable[[], Asked] | None = None,
) -> Path:
    """Run job(out, shard, device); with shard 'auto' on the launcher's shard, and under torchrun merge into `out`
    (the shards are removed once merged; `out` is none of the job's `inputs`, checked before any shard is written,
    and a finished `out` is kept by --resume only if it was made as `asked` (jobs.check_output)). Returns the file
    this process wrote (or merged)."""
    if shard != "auto":
        job(out, shard, device)
        return Path(out)
    if check_output(Path(out), [], overwrite, resume, inputs=inputs, asked=asked):
        say(f"{out} is already complete")
        return Path(out)
    launch, dev = launched(device)  # "cuda" and "auto" mean this rank's own GPU under torchrun
    if launch.world == 1:
        say(f"shard auto: no launcher with more than one process ({launch.launcher}): the whole job, device {dev}")
        job(out, "", dev)
        return Path(out)
    if not 0 <= launch.rank < launch.world:
        raise UserError(f"--shard auto: {launch.launcher} gave rank {launch.rank} of {launch.world}")
    part = shard_path(out, launch.rank, launch.world)
    say(f"shard {launch.shard} from {launch.launcher}, device {dev}: writing {part}")
    if launch.launcher != "torchrun":
        job(part, launch.shard, dev)
        return part
    import torch
    import torch.distributed as dist

    if dev.startswith("cuda"):
        torch.cuda.set_device(dev)  # before the process group, so that NCCL binds this rank to its own GPU
    dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo", timeout=timedelta(hours=24))
    try:
        job(part, launch.shard, dev)
        dist.barrier()
        if launch.rank == 0:
            parts = [shard_path(out, r, launch.world) for r in range(launch.world)]
            merge(parts, out)
            for done in parts:
                done.unlink()
            say(f"rank 0 merged {launch.world} shards into {out}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return Path(out)
