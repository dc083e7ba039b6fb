"""Data-parallel training helpers (``torchrun``): process group, sharding, exact gradient averaging.

How a multi-process run stays the single-process algorithm (docs/design.md §5):

* **Same batches.** Every rank draws the same (seed, epoch) permutation of the *whole* training
  set and walks the same global batches of ``batch_size``; rank ``r`` computes only the samples
  of each global batch that lie in its shard (training index ``i`` with ``i % world == r``).
  Every rank therefore runs the same number of steps — a rank whose part of a batch is empty
  still joins the all-reduce with zero gradients — and no shard needs padding or repeating.
* **Same gradient.** Each loss term is a mean over rows, so the global batch's gradient is
  Σ_r (n_r / n) · ∇(local mean); ``all_reduce_grads`` sums exactly that. Clipping and Adam then
  see identical gradients on every rank, so the weights stay identical without broadcasts.
* **Own shard only.** A rank reads and caches the backbone features of its shard only.
* **Same statistics.** The per-channel feature mean/std are all-reduced sums (float64).

``world == 1`` (no ``torchrun``) takes none of these paths: the single-process trainer is unchanged.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def env_info() -> DistInfo:
    """Rank/world from the ``torchrun`` environment (RANK, WORLD_SIZE, LOCAL_RANK); 0/1 without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (as torchrun sets them): {e}") from e
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def default_backend() -> str:
    """NCCL when CUDA is available, gloo otherwise (the trainer's tensors live on the CPU: gloo)."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init(backend: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the environment (no-op for a single process).

    Args:
        backend: "gloo" or "nccl"; default ``default_backend()``.
        timeout_s: collective timeout (calibration on rank 0 runs while the others wait).
    """
    info = env_info()
    if not info.enabled:
        return info
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank, dist.get_backend())
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown process-group backend {backend!r}; choose one of {BACKENDS}")
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("rank %d/%d joined the %s process group", info.rank, info.world, backend)
    return DistInfo(info.rank, info.world, info.local_rank, backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistInfo:
    """The initialised process group's rank/world, or the single-process default."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_info().local_rank, dist.get_backend())
    return DistInfo()


def _device() -> torch.device:
    """Where collective buffers live: NCCL needs CUDA tensors, gloo takes CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(n: int, info: DistInfo) -> List[int]:
    """Training indices this rank caches: ``i % world == rank`` (the whole range for one process)."""
    return list(range(info.rank, n, info.world))


def local_part(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Global indices of one batch → positions, in this rank's shard, of the ones it owns."""
    mine = batch[batch % info.world == info.rank]
    return mine // info.world


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (returns ``t``)."""
    if dist.is_initialized():
        buf = t.to(_device())
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t.copy_(buf.to(t.device))
    return t


def all_reduce_grads(params: Sequence[torch.nn.Parameter], weight: float) -> None:
    """Replace every grad by Σ_r weight_r · grad_r (``weight`` = this rank's n_r / n).

    A parameter that got no gradient on any rank keeps ``grad = None`` (Adam then skips it, as in
    one process); one that got a gradient elsewhere but not here joins with zeros.
    """
    params = list(params)
    has = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float64)
    all_reduce_sum(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    if not live:
        return
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad * weight).reshape(-1) for p in live])
    all_reduce_sum(flat)
    offset = 0
    for p in live:
        k = p.numel()
        p.grad = flat[offset:offset + k].view_as(p).clone()
        offset += k


@torch.no_grad()
def feature_stats(feats: Sequence[torch.Tensor]) -> List[tuple]:
    """Per level (mean (D,), std (D,)) over every rank's (n, D, h, w) features, like ``Tensor.std``
    (Bessel-corrected), from float64 sums all-reduced over ranks."""
    out = []
    for f in feats:
        x = f.double().transpose(0, 1).reshape(f.shape[1], -1)  # (D, n·h·w)
        s = torch.cat([x.sum(1), (x * x).sum(1), torch.tensor([float(x.shape[1])], dtype=torch.float64)])
        all_reduce_sum(s)
        d = f.shape[1]
        total, sq, cnt = s[:d], s[d:2 * d], s[-1]
        mean = total / cnt
        var = (sq - cnt * mean * mean) / (cnt - 1.0)
        out.append((mean.float(), var.clamp_min(0.0).sqrt().float()))
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (identity for one process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_output(info: DistInfo) -> Iterator[None]:
    """Silence stdout and INFO logging on ranks other than 0 (warnings and errors still show)."""
    if info.is_main:
        yield
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        root.setLevel(level)
