"""Data loaders for training and evaluation: seeded, resumable, rank-sharded.

Training order: ``DistributedSampler(shuffle=True, seed=seed)`` even for one process, so the epoch's
permutation depends only on (seed, epoch); it pads to a multiple of the world size, no drop_last
(PYSKL). Per-item sampling randomness comes from the dataset (``set_epoch``), so the batches do not
depend on the number of workers, and skipping the batches an interrupted run already consumed
reproduces the rest of the epoch exactly.
"""

import math
import random
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler


def iterations_per_epoch(num_items, world_size, batch_size):
    """Batches per process and epoch: the sampler pads ``num_items`` to a multiple of the world
    size, and the last batch may be partial (no drop_last), as PYSKL's loaders."""
    return math.ceil(math.ceil(num_items / world_size) / batch_size)


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` that can start an epoch after its first ``start`` indices."""

    def __init__(self, dataset, num_replicas, rank, shuffle, seed):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_position(self, epoch, start=0):
        """Iterate epoch ``epoch``'s order from its ``start``-th index (this rank's share)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"sampler position {start} outside [0, {self.num_samples}]")
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self):
        return self.num_samples - self.start


def seed_worker(worker_id, num_workers, rank, seed):
    """PYSKL's worker seeding: numpy and random get ``num_workers·rank + worker_id + seed`` (torch's
    worker RNG is already seeded by the loader's generator)."""
    worker_seed = num_workers * rank + worker_id + seed
    np.random.seed(worker_seed % 2**32)
    random.seed(worker_seed)


def _loader(dataset, batch_size, sampler, num_workers, rank, seed, pin_memory):
    # A private generator for the loader's per-iterator base seed keeps the global torch RNG
    # stream (dropout, if any) independent of how many loaders were created, e.g. after a resume.
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        worker_init_fn=partial(seed_worker, num_workers=num_workers, rank=rank, seed=seed),
        generator=generator,
    )


def train_loader(dataset, batch_size, num_workers, dist_info, seed, pin_memory):
    sampler = ResumableSampler(
        dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=seed
    )
    return _loader(dataset, batch_size, sampler, num_workers, dist_info.rank, seed, pin_memory)


def eval_loader(dataset, batch_size, num_workers, dist_info, seed, pin_memory):
    """Rank r gets items r, r + W, r + 2W, ... (padded by wrapping); see ``merge_rank_outputs``."""
    sampler = DistributedSampler(
        dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=False
    )
    return _loader(dataset, batch_size, sampler, num_workers, dist_info.rank, seed, pin_memory)


def merge_rank_outputs(per_rank, num_items):
    """Undo ``eval_loader``'s interleaving: rows of each rank's ``(n_r, ...)`` array -> dataset order."""
    world = len(per_rank)
    if world == 1:
        return per_rank[0][:num_items]
    rows = [per_rank[k % world][k // world] for k in range(num_items)]
    return np.stack(rows)
