"""Process-group setup for ``torchrun`` launches, and the few collectives the engine needs.

``torchrun --nproc-per-node N -m msg3d train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; a plain ``python -m msg3d train`` sets none of them and runs as a
single process (world size 1) without a process group.
"""

import inspect
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type):
    """Join the process group torchrun prepared (NCCL on CUDA, gloo on CPU); no-op otherwise."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    if info.world_size == 1:
        return info
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def shutdown(info):
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(info, obj):
    """List of every rank's ``obj`` (rank order); ``[obj]`` in a single process."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info, obj):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info, tensor):
    """Sum ``tensor`` over ranks in place (identity in a single process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sync_buffers(info, module):
    """Copy rank 0's buffers (BN running statistics) to every rank.

    Training keeps BN statistics per process as PYSKL does (DDP without buffer broadcast); before
    validating and at the end, every rank adopts rank 0's, so all ranks hold the very model that
    rank 0 saves and validate exactly it.
    """
    if not info.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def data_parallel(module, device):
    """``module`` in DistributedDataParallel with per-process BN statistics, as PYSKL's MMDDP
    (``broadcast_buffers=False``): no buffer broadcast before each forward; ``sync_buffers``
    adopts rank 0's before validating.

    PyTorch 2.14 deprecates ``broadcast_buffers`` for ``forward_sync_buffers`` (a FutureWarning
    on every DDP start); where that argument exists it is used instead. It differs only in also
    broadcasting rank 0's buffers once at construction, when every rank holds the same ones anyway
    (the same seed, or the same checkpoint on resume), so the training is the same.
    """
    # The model's 1x1 convolutions get weight gradients with channels_last strides (C_in, 1, C_in,
    # C_in) or contiguous ones (C_in, 1, 1, 1), as their input is laid out; for a 1x1 kernel both
    # are the same bytes, and DDP copies every gradient into its bucket anyway (no
    # gradient_as_bucket_view), so its warning about the strides costs nothing here: keep it out of
    # every training log.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides", category=UserWarning)
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    if "forward_sync_buffers" in inspect.signature(ddp).parameters:
        return ddp(module, device_ids=device_ids, forward_sync_buffers=False)
    return ddp(module, device_ids=device_ids, broadcast_buffers=False)

