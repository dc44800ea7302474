"""Data-loading throughput and memory of ``SkeletonDataset`` through a ``DataLoader``.

Builds synthetic derived stores (random NTU-shaped samples, streamed to disk, so building never
holds a store in memory), then times ``DataLoader(batch_size=16, num_workers=2)`` over them for a
fixed number of batches after a warm-up, and reads the resident memory of the main process and
its workers from ``/proc``. RSS is split into anonymous memory (what the process really owns) and
file-backed pages of the memory-mapped store (page cache, shared, reclaimable). Run with two
store sizes to see that neither grows with the dataset.

    python benchmarks/data_speed.py [--sizes 2000 8000] [--batches 300] [--workers 2]

Goal: >= 5000 samples/s (train mode, clip_len 100).
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from msg3d.data.dataset import SkeletonDataset
from msg3d.data.store import StoreWriter


def build_store(out_dir, num_samples, seed=0, num_classes=60, split="train"):
    """NTU-like synthetic store, streamed to disk: 1-2 persons, 30-300 frames (mean ~100), 25 joints
    x 3, labels cycling through ``num_classes``, every sample in the one split ``split``."""
    rng = np.random.default_rng(seed)
    names = [f"S{i:06d}" for i in range(num_samples)]
    with StoreWriter(out_dir, num_joints=25, channels=3) as writer:
        for i, name in enumerate(names):
            persons = 1 + int(rng.random() < 0.3)
            frames = int(np.clip(rng.gamma(4.0, 25.0), 30, 300))
            writer.append(name, i % num_classes, rng.standard_normal((persons, frames, 25, 3), dtype=np.float32))
        writer.finish(splits={split: names},
                      meta={"layout": "nturgb+d", "modality": "j", "num_classes": num_classes})
    return out_dir


def proc_status_kb(pid, key):
    """The kB of line ``key`` of ``/proc/PID/status`` (0 when absent or the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def child_pids(pid):
    """The pids of ``pid``'s child processes (from ``/proc``)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return kids


def memory_mb(pid):
    """(anon MB, file-backed MB) of ``pid`` and, separately, summed over its child processes."""
    def one(p):
        anon, file, shmem = (proc_status_kb(p, key) for key in ("RssAnon", "RssFile", "RssShmem"))
        return anon / 1024, (file + shmem) / 1024
    kids = [one(c) for c in child_pids(pid)]
    return one(pid), (sum(k[0] for k in kids), sum(k[1] for k in kids))


def measure(store_dir, *, batches, warmup, workers, batch_size, clip_len, num_clips, test_mode, seed):
    ds = SkeletonDataset(store_dir, "train", clip_len=clip_len, num_clips=num_clips, test_mode=test_mode, seed=seed)
    # random order over the whole store; drawing with replacement keeps the sampler's own memory
    # independent of the store size (a shuffled epoch list would grow with it)
    sampler = RandomSampler(ds, replacement=True, num_samples=(warmup + batches) * batch_size,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    samples = 0
    for _ in range(batches):
        keypoint, _ = next(it)
        samples += keypoint.shape[0]
    elapsed = time.perf_counter() - start
    mem = memory_mb(os.getpid())
    del it
    return samples / elapsed, mem


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="store sizes (samples)")
    parser.add_argument("--batches", type=int, default=300, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches first (worker start-up)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--clip-len", type=int, default=100)
    parser.add_argument("--tmp", type=Path, default=None, help="where to build the stores (default: system tmp)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    modes = [("train, seeded", dict(num_clips=1, test_mode=False, seed=0)),
             ("train, global RNG", dict(num_clips=1, test_mode=False, seed=None)),
             ("test, 10 clips", dict(num_clips=10, test_mode=True, seed=None))]
    header = (f"{'store':>8} {'MB':>6}  {'mode':<18} {'samples/s':>10}  {'main anon/file MB':>18}  "
              f"{'workers anon/file MB':>21}")
    print(f"DataLoader: batch {args.batch_size}, {args.workers} workers, clip_len {args.clip_len}, "
          f"{args.batches} timed batches after {args.warmup}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in args.sizes:
            store = build_store(Path(tmp) / f"store{size}", size)
            mb = (store / "data.npy").stat().st_size / 2**20
            for name, kwargs in modes:
                rate, ((m_anon, m_file), (w_anon, w_file)) = measure(
                    store, batches=args.batches, warmup=args.warmup, workers=args.workers,
                    batch_size=args.batch_size, clip_len=args.clip_len, **kwargs)
                print(f"{size:>8} {mb:>6.0f}  {name:<18} {rate:>10.0f}  {m_anon:>8.0f} / {m_file:<7.0f}  "
                      f"{w_anon:>10.0f} / {w_file:<8.0f}", flush=True)
    print("(samples/s counts samples, not clips: a 10-clip test sample is 10x the data; goal >= 5000 in train mode)")


if __name__ == "__main__":
    main()
