"""``SkeletonDataset``: one split of a derived store, sampled and formatted as PYSKL's pipeline does.

Per item: ``UniformSample(clip_len, num_clips)`` frame indices -> ``PoseDecode`` (gather those
frames, float32) -> ``FormatGCNInput(num_person=2)`` (zero-pad missing persons). The store
already holds the normalised modality of every full sequence (``msg3d derive``), so an item is
one read of that sample's rows and one vectorised gather: O(item) memory and time, not O(dataset).
The gather and padding are ``msg3d.data.sampling.format_gcn_input``, shared with ``msg3d predict``.
"""

import numpy as np
import torch
from torch.utils.data import Dataset

from msg3d.data.sampling import format_gcn_input, uniform_sample
from msg3d.data.store import open_store


class SkeletonDataset(Dataset):
    """Items ``(keypoint, label)``: keypoint float32 tensor (num_clips, 2, clip_len, V, C), label int.

    Args:
        store_dir: folder written by ``msg3d derive``.
        split: split name in the store (ValueError listing the names if unknown).
        clip_len, num_clips: ``UniformSample`` arguments (PYSKL: 100 frames; 1 clip train/val,
            10 clips test).
        test_mode: deterministic PYSKL test indices (legacy RNG reseeded with 255 per sample).
        seed: train mode only. With a seed, item ``j`` of epoch ``e`` (``set_epoch``) draws from
            ``np.random.default_rng([seed, e, j])``, independent of workers and resumable; with
            ``None``, numpy's global RNG (PYSKL's behaviour, seeded per worker by the loader).
        repeat: the split is iterated ``repeat`` times per epoch (item ``j`` is sample ``j % n``).

    Attributes: ``num_classes``, ``layout`` (name), ``labels`` and ``frame_dirs`` (split order),
    ``channels``, ``num_joints``, ``store``.
    """

    def __init__(self, store_dir, split, clip_len=100, num_clips=1, test_mode=False, seed=None, repeat=1):
        if int(clip_len) < 1 or int(num_clips) < 1 or int(repeat) < 1:
            raise ValueError(f"clip_len, num_clips and repeat must be >= 1, got {clip_len}, {num_clips}, {repeat}")
        self.store = open_store(store_dir)
        self.split = split
        self.indices = self.store.split_indices(split)
        if len(self.indices) == 0:
            raise ValueError(f"{self.store.path}: split {split!r} is empty")
        self.clip_len, self.num_clips = int(clip_len), int(num_clips)
        self.test_mode = bool(test_mode)
        self.seed = seed
        self.repeat = int(repeat)
        self.epoch = 0
        meta = self.store.meta
        self.num_classes = int(meta["num_classes"])
        self.layout = meta["layout"]
        self.modality = meta.get("modality")
        self.num_joints, self.channels = int(meta["num_joints"]), int(meta["channels"])
        self.labels = self.store.labels[self.indices]
        self.frame_dirs = self.store.frame_dirs[self.indices]
        self._frames = self.store.total_frames[self.indices]

    def set_epoch(self, epoch):
        """Select the epoch whose seeded train-mode sampling ``__getitem__`` reproduces."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.indices) * self.repeat

    def frame_indices(self, j):
        """UniformSample indices (num_clips * clip_len,) for item ``j`` in the current epoch."""
        k = j % len(self.indices)
        num_frames = int(self._frames[k])
        if self.test_mode:
            return uniform_sample(num_frames, self.clip_len, self.num_clips, test_mode=True)
        rng = None if self.seed is None else np.random.default_rng([self.seed, self.epoch, j])
        return uniform_sample(num_frames, self.clip_len, self.num_clips, rng=rng)

    def __getitem__(self, j):
        j = int(j)
        if not -len(self) <= j < len(self):
            raise IndexError(f"index {j} out of range for a dataset of {len(self)} items")
        j %= len(self)
        k = j % len(self.indices)
        out = format_gcn_input(self.store.read_sample(self.indices[k]), self.frame_indices(j), self.clip_len)
        return torch.from_numpy(out), int(self.labels[k])
