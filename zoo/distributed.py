"""Data parallelism across processes started by ``torchrun`` (one process per GPU, or several on a CPU).

Each process holds the whole model and a shard of every epoch's permutation (``train.batch_size`` is per
process, so the global batch is ``batch_size × world``). After each backward pass the gradients of the
optimizer about to step are averaged over the processes, so every replica takes the same step: the update of
DistributedDataParallel, done in the trainer rather than by wrapping the model, because zoo models run
their submodules themselves (a GAN calls G and D in its training step, not one ``forward``). Batch-norm
buffers follow rank 0 before each validation, as DDP's ``broadcast_buffers`` does.

Rank 0 alone writes the run dir (checkpoints, TensorBoard, samples, metrics). ``last.pt`` carries every rank's
RNG states, so a resumed run with the same number of processes continues exactly. A stop request (Ctrl-C,
SIGTERM from torchrun or a scheduler) is agreed on by all ranks each step, so they stop after the same batch.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from .errors import ZooError
from .runtime import set_threads


def speaks_for_machine() -> bool:
    """False in a process torchrun started beside another on its machine (LOCAL_RANK > 0 of WORLD_SIZE > 1): bad
    input is met alike by every process, so each machine's local rank 0 alone says it. A LOCAL_RANK that another
    launcher left behind, with no WORLD_SIZE above 1, silences nothing."""
    try:
        env = launch_env()
    except ZooError:  # variables set wrong by hand: every process says so
        return True
    return not (env["local_rank"] > 0 and env["world"] > 1)


def launch_env() -> dict[str, int]:
    """WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE as torchrun sets them (a plain run: a world of 1), checked:
    variables left half-set or mistyped by hand are one line, not a ValueError from deep in torch."""
    env = os.environ
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    for name in names:
        if name in env and not env[name].strip().isdigit():
            raise ZooError(f"{name}={env[name]!r} is not a process count or index; launch with torchrun, or unset "
                           f"{name} for one process")
    world = int(env.get("WORLD_SIZE", "1"))
    if world > 1:
        missing = [n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(n)]
        if missing or not int(env["RANK"]) < world:
            what = f"{', '.join(missing)} unset" if missing else f"RANK={env['RANK']} is not below WORLD_SIZE"
            raise ZooError(f"WORLD_SIZE={world} but {what}: start several processes with torchrun (it sets them "
                           f"all), or unset WORLD_SIZE for one process")
    local_rank = int(env.get("LOCAL_RANK", "0"))
    return {"world": world, "rank": int(env.get("RANK", "0")), "local_rank": local_rank,
            "local_world": int(env.get("LOCAL_WORLD_SIZE", local_rank + 1))}


class Dist:
    """This process's place in the group; every method is a no-op (or the identity) for a single process."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, owns_group: bool = False,
                 control=None):
        self.rank, self.world, self.local_rank, self.owns_group = rank, world, local_rank, owns_group
        self.control = control  # a gloo group for host-side flags (None: the default group is already gloo)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "Dist":
        """Join the group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK; a plain run is a group of one."""
        env = launch_env()
        world, rank, local_rank, local_world = env["world"], env["rank"], env["local_rank"], env["local_world"]
        if world <= 1:
            return cls()
        import torch.distributed as dist

        set_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            # every rank of the machine checks the count, so local rank 0 (the one that prints: cli.main) says it
            n = torch.cuda.device_count()
            if max(local_world, local_rank + 1) > n:
                raise ZooError(f"torchrun starts {max(local_world, local_rank + 1)} processes on this machine but it "
                               f"has {n} CUDA devices; start torchrun with --nproc_per_node at most {n}")
            torch.cuda.set_device(local_rank)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if cuda else "gloo")
        # the per-step stop flag travels between the hosts' CPUs: over NCCL it would wait for the GPU every step
        control = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
        return cls(rank, world, local_rank, owns, control)

    def device(self, device: torch.device) -> torch.device:
        """Each process drives its own GPU (cuda:LOCAL_RANK)."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def close(self) -> None:
        if self.enabled and self.owns_group:
            import torch.distributed as dist

            dist.barrier()  # every rank past its last collective before any tears its connections down
            dist.destroy_process_group()
            self.owns_group = False

    # ---- data ---------------------------------------------------------------------------------------------
    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of an epoch's permutation: every world-th index, all shards the same length (the
        last ``len % world`` items of the permutation are left out this epoch, as DistributedSampler's
        drop_last does), so every rank runs the same number of steps."""
        if not self.enabled:
            return order
        n = len(order) // self.world
        return order[self.rank::self.world][:n]

    # ---- collectives ----------------------------------------------------------------------------------------
    def average_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Mean of each gradient over the ranks, in one flat all-reduce (one message, not one per tensor)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Logged numbers averaged over the ranks (every rank must call this with the same keys)."""
        if not self.enabled or not values:
            return values
        import torch.distributed as dist

        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any: all ranks act on a stop request after the same step."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def broadcast_module(self, module: torch.nn.Module, buffers_only: bool = False) -> None:
        """Rank 0's parameters (unless ``buffers_only``) and buffers, copied to every rank."""
        if not self.enabled:
            return
        import torch.distributed as dist

        tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
        for t in tensors:
            if t.dtype == torch.bool:  # not every backend carries bool
                u = t.data.to(torch.uint8)
                dist.broadcast(u, src=0)
                t.data.copy_(u.bool())
            else:
                dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's value of ``obj`` on every rank (a run dir chosen once, say)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
