"""Shared helpers for the engine tests (no tests here): tiny learnable stores, tiny hyper-parameters,
a reference training run. Test modules load it with ``pytest_plugins = ["test_engine_common"]`` so
that its session fixtures (the store, the reference run) are built once for all of them.
"""

import contextlib

import numpy as np
import pytest

from msg3d.data.derive import derive_annotations


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: for these tiny models a second thread buys nothing, and on a busy
    2-core machine OpenMP threads waiting on each other make steps 10-100x slower. Bit-identical
    results need equal thread counts, so subprocesses get ``OMP_NUM_THREADS=1`` too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    with one_thread():
        yield


# The reviewers' tiny-run settings (issue 4), smaller still where it keeps tests fast.
TINY = {
    "epochs": 2,
    "repeat": 1,
    "batch_size": 4,
    "clip_len": 16,
    "num_workers": 0,
    "model": {"base_channels": 12, "num_gcn_scales": 3, "num_g3d_scales": 2},
}

# Joints moved per class (never 0, 1, 4, 8, 20: those set PreNormalize3D's centre and rotation).
_CLASS_JOINTS = [(7, 11), (15, 19), (3,), (13, 17)]


def tiny_annotations(num_train=12, num_val=6, num_classes=3, seed=0, num_frames=(12, 30)):
    """A PYSKL annotation dict (nturgb+d 3D) whose classes are easy to tell apart: class c moves its
    joints ``_CLASS_JOINTS[c]`` away from a shared random skeleton, with per-sample noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 0.3, (25, 3))
    annotations, train, val = [], [], []
    for i in range(num_train + num_val):
        label = i % num_classes
        frames = int(rng.integers(*num_frames))
        persons = 1 + (i % 4 == 0)
        kp = base + rng.normal(0, 0.03, (persons, frames, 25, 3))
        wave = np.sin(np.linspace(0, 3, frames))[None, :, None]
        for joint in _CLASS_JOINTS[label]:
            kp[:, :, joint, label % 3] += 0.6 + 0.2 * wave[..., 0]
        frame_dir = f"S001C001P{i:03d}R001A{label + 1:03d}"
        annotations.append({"frame_dir": frame_dir, "label": label, "total_frames": frames,
                            "keypoint": kp.astype(np.float16)})
        (train if i < num_train else val).append(frame_dir)
    return {"split": {"tiny_train": train, "tiny_val": val}, "annotations": annotations}


def make_store(path, modality="j", **kwargs):
    return derive_annotations(tiny_annotations(**kwargs), path, "nturgb+d", modality, progress=False)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """Derived joint store: 12 train + 6 val samples, 3 classes, split pair 'tiny'."""
    return make_store(tmp_path_factory.mktemp("store") / "j")


def read_epochs(path, drop_timing=True):
    """epochs.csv rows as dicts of strings (timing columns dropped: they are wall-clock)."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if drop_timing:
        rows = [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in rows]
    return rows


# A reference run shared by the train and test tests: 3 epochs x 9 iterations (repeat 3), lr 0.03
# for the batch of 4, so that the tiny model learns; a checkpoint every 4 iterations for resuming,
# a log line every 5.
REFERENCE = dict(TINY, epochs=3, repeat=3, lr=0.03, lr_batch=4, checkpoint_interval=4, log_interval=5)
REFERENCE_SEED = 11


@pytest.fixture(scope="session")
def reference_run(tiny_store, tmp_path_factory):
    """RUN_DIR of an uninterrupted REFERENCE training on ``tiny_store`` (3 epochs x 9 iterations)."""
    from msg3d.engine.train import train

    out = tmp_path_factory.mktemp("runs") / "reference"
    with one_thread():
        train(tiny_store, "tiny", out, REFERENCE, seed=REFERENCE_SEED, device="cpu", progress_seconds=0)
    return out


def load_state_dict(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_state_dicts_equal(a, b):
    import torch

    assert list(a) == list(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def read_log(path, kind):
    """``log.jsonl`` records of one type, without the fields measured on the machine (wall clock,
    memory: ``msg3d.engine.saver.MEASURED_KEYS``), which differ between identical runs."""
    import json

    from msg3d.engine.saver import MEASURED_KEYS

    records = [json.loads(line) for line in open(path).read().splitlines()]
    return [{k: v for k, v in r.items() if k not in MEASURED_KEYS} for r in records if r["type"] == kind]
