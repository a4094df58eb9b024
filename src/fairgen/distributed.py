"""The processes of one distributed audit or fix: which rank this process is, how many there are,
barriers, and (for data-parallel training) sums across processes.

A launcher says it started several processes through the environment: `RANK` / `WORLD_SIZE` /
`LOCAL_RANK` (torchrun, `accelerate launch --multi_gpu`), or the variables of mpirun (what
`accelerate launch --cpu --mpirun_hostfile ...` starts: Open MPI's `OMPI_COMM_WORLD_*`, MPICH / Intel MPI's
`PMI_*`, MVAPICH's `MV2_COMM_WORLD_*`). With none of them set there is one process and torch.distributed is
never touched. torch.distributed serves as a barrier that also carries input errors, so every process
stops with the same one-line message; the work itself is shared through the run directory
(docs/distributed.md). `fairgen fix` also sums its LoRA gradients across processes (Processes.sum).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Iterator

from .types import FairgenError

if TYPE_CHECKING:
    import torch

# Each name's alternatives, in the order they are looked up: torchrun's first, then the MPI flavours'.
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
WORLD_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")
LOCAL_WORLD_VARS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE")
# How long a barrier waits for the slowest process: its whole share of the images, or a model download. A
# process that dies is noticed sooner: the launchers stop every process of a run when one of them fails.
BARRIER_TIMEOUT = timedelta(hours=6)


def _env_int(names: tuple[str, ...], default: int) -> int:
    """The first of the environment variables `names` that is set, as an int; `default` when none is."""
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip():
            try:
                return int(value)
            except ValueError:
                raise FairgenError(f"environment variable {name}={value!r} is not an integer") from None
    return default


def launch_rank() -> int:
    """This process's rank as its launcher set it in the environment; 0 when it was not launched as one
    of several or the value is no integer (the process that prints results and errors)."""
    try:
        return _env_int(RANK_VARS, 0)
    except FairgenError:
        return 0


def local_world_size() -> int:
    """How many processes of this launch share this host (they share its cores): the launcher's local size,
    else its world size (as if all were here), 1 when not launched as one of several."""
    return max(1, _env_int(LOCAL_WORLD_VARS, _env_int(WORLD_VARS, 1)))


class SharedError(FairgenError):
    """An error that every process of a distributed audit raises at once (Processes.step), so one of them,
    rank 0, reports it."""


@dataclass(frozen=True)
class Processes:
    """The processes sharing one audit or fix: this one's `rank` among `world` of them (rank 0 is the main
    one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes the run's manifest, merged records and results."""
        return self.rank == 0

    @contextmanager
    def step(self) -> Iterator[None]:
        """A stretch of work that every process finishes before any goes on (a barrier at its end).

        A FairgenError raised inside it on any process is raised on every process at the barrier, as a
        SharedError with the lowest failing rank's message, so all of them stop with that one line. With one
        process it is a plain block.
        """
        if self.world == 1:
            yield
            return
        error: str | None = None
        try:
            yield
        except FairgenError as e:
            error = str(e)
        import torch.distributed as dist

        errors: list[str | None] = [None] * self.world
        dist.all_gather_object(errors, error)
        failed = [e for e in errors if e is not None]
        if failed:
            raise SharedError(failed[0])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `tensor` (any shape, the same on every process) over all processes, on
        tensor's device and in its dtype; reduced in float32 on the CPU (gloo), so it runs beside any
        device. With one process: the tensor itself."""
        if self.world == 1:
            return tensor
        import torch
        import torch.distributed as dist

        buffer = tensor.detach().to("cpu", torch.float32).contiguous()
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.to(tensor.device, tensor.dtype)


@contextmanager
def processes() -> Iterator[Processes]:
    """The processes of this launch, joined in a torch.distributed group for the time of the block.

    No launcher variables (or a world of one): a single Processes(0, 1) and torch.distributed is not used.
    A group already initialised by the caller (e.g. by an `accelerate.Accelerator`) is used as it is and
    left open; otherwise one is made from `MASTER_ADDR` / `MASTER_PORT` and closed at the end. The
    barriers use gloo, which runs beside any device the models use (even several processes per GPU). With
    CUDA, each process's default device becomes GPU `LOCAL_RANK` (modulo the GPUs it sees), so a model put
    on "cuda" lands on its own GPU.
    """
    if _env_int(WORLD_VARS, 1) <= 1:
        yield Processes()
        return
    import torch
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        rank, world = _env_int(RANK_VARS, 0), _env_int(WORLD_VARS, 1)
        if not 0 <= rank < world:
            raise FairgenError(f"rank {rank} is outside a world of {world} processes (launcher environment)")
        if torch.cuda.is_available():
            torch.cuda.set_device(_env_int(LOCAL_RANK_VARS, 0) % torch.cuda.device_count())
        try:
            dist.init_process_group("gloo", rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)
        except (ValueError, RuntimeError) as e:
            raise FairgenError(f"cannot join the {world} processes of this launch: {e}") from None
        created = True
    try:
        yield Processes(dist.get_rank(), dist.get_world_size())
    finally:
        if created:
            dist.destroy_process_group()
