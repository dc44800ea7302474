"""The derived store: one modality of a whole dataset, memory-mappable, written once by `msg3d derive`.

Folder layout (all plain numpy / JSON, no pickle)::

    data.npy     float32 (F, V, C): every sample's frames concatenated. Sample i occupies rows
                 offset[i] .. offset[i] + M_i * T_i, person-major (row = offset + m * T + t).
    index.npz    frame_dir (str), label, offset, total_frames (T), num_person (M), in annotation order
    splits.json  {split_name: [sample index, ...]} (ascending = annotation order, as PYSKL's PoseDataset)
    meta.json    format, layout, modality, channels, num_joints, num_classes, source, pipeline, ...

Readers never load ``data.npy`` whole: ``Store.data`` is a read-only memmap
(``np.load(mmap_mode='r')``) and ``Store.read_sample`` reads one sample's rows with a single
``pread``. The dataset uses the latter: it costs the same, but leaves no file pages mapped in the
worker, so a worker's RSS stays flat however much of a large store an epoch reads (a memmap's
touched pages count as the reader's RSS). The writer streams rows to disk sample by sample, so
deriving never holds the output in memory. Torch-free.
"""

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format

from msg3d.fileio import atomic_path, write_json_atomic

DATA_FILE = "data.npy"
INDEX_FILE = "index.npz"
SPLITS_FILE = "splits.json"
META_FILE = "meta.json"
FORMAT = "msg3d-derived-store"
FORMAT_VERSION = 1
DTYPE = np.dtype("<f4")


def _npy_header(rows, num_joints, channels):
    return {"descr": npy_format.dtype_to_descr(DTYPE), "fortran_order": False,
            "shape": (rows, num_joints, channels)}


class StoreWriter:
    """Stream samples into a new store folder that appears at ``out_dir`` atomically.

    Use as a context manager; call ``append`` per sample (annotation order) and ``finish``
    once before the block ends. An exception (or a missing ``finish``) leaves no store behind and
    an existing ``out_dir`` untouched::

        with StoreWriter(out_dir, num_joints=25, channels=3) as writer:
            for ann in annotations:
                writer.append(ann["frame_dir"], ann["label"], keypoint)   # (M, T, V, C)
            writer.finish(splits={"train": [...frame_dirs]}, meta={"layout": ..., "modality": ...})
    """

    def __init__(self, out_dir, num_joints, channels):
        self.out_dir = Path(out_dir)
        self.num_joints = int(num_joints)
        self.channels = int(channels)
        self.frame_dirs, self.labels, self.offsets, self.total_frames, self.num_person = [], [], [], [], []
        self.rows = 0
        self._finished = False

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self.tmp = self._stack.enter_context(atomic_path(self.out_dir, is_dir=True))
        self._file = self._stack.enter_context(open(self.tmp / DATA_FILE, "wb"))
        # numpy leaves room in the header for the row count to grow, so it is rewritten in place at the end
        npy_format.write_array_header_1_0(self._file, _npy_header(0, self.num_joints, self.channels))
        self._header_size = self._file.tell()
        return self

    def append(self, frame_dir, label, keypoint):
        """Add one sample: ``keypoint`` (M, T, V, C), stored as float32. Returns its sample index."""
        keypoint = np.asarray(keypoint)
        if keypoint.ndim != 4 or keypoint.shape[2:] != (self.num_joints, self.channels):
            raise ValueError(f"{frame_dir}: keypoint shape {keypoint.shape} does not fit a store of "
                             f"(M, T, {self.num_joints}, {self.channels})")
        num_person, num_frames = keypoint.shape[:2]
        self._file.write(np.ascontiguousarray(keypoint, dtype=DTYPE).data)
        self.frame_dirs.append(frame_dir)
        self.labels.append(int(label))
        self.offsets.append(self.rows)
        self.total_frames.append(num_frames)
        self.num_person.append(num_person)
        self.rows += num_person * num_frames
        return len(self.frame_dirs) - 1

    def finish(self, splits, meta):
        """Write index, splits (name -> frame_dirs, stored as ascending sample indices) and meta."""
        position = {frame_dir: i for i, frame_dir in enumerate(self.frame_dirs)}
        if len(position) != len(self.frame_dirs):
            raise ValueError("duplicate frame_dir in the store's samples")
        split_indices = {}
        for name, members in splits.items():
            unknown = [m for m in members if m not in position]
            if unknown:
                raise ValueError(f"split {name!r} lists {len(unknown)} frame_dir(s) not in the store, "
                                 f"e.g. {unknown[:5]}")
            split_indices[name] = sorted({position[m] for m in members})

        self._file.seek(0)
        npy_format.write_array_header_1_0(self._file, _npy_header(self.rows, self.num_joints, self.channels))
        if self._file.tell() != self._header_size:
            raise RuntimeError("npy header size changed while finalising the store")
        self._file.close()

        np.savez(self.tmp / INDEX_FILE,
                 frame_dir=np.array(self.frame_dirs, dtype=np.str_),
                 label=np.array(self.labels, dtype=np.int64),
                 offset=np.array(self.offsets, dtype=np.int64),
                 total_frames=np.array(self.total_frames, dtype=np.int64),
                 num_person=np.array(self.num_person, dtype=np.int64))
        write_json_atomic(self.tmp / SPLITS_FILE, split_indices, indent=None)
        meta = {
            "num_classes": max(self.labels, default=-1) + 1,
            **meta,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_samples": len(self.frame_dirs),
            "num_rows": self.rows,
            "num_joints": self.num_joints,
            "channels": self.channels,
            "dtype": "float32",
        }
        write_json_atomic(self.tmp / META_FILE, meta)
        self._finished = True

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._finished:
            exc = RuntimeError("StoreWriter closed without finish(): no store written")
            self._stack.__exit__(type(exc), exc, None)
            raise exc
        return self._stack.__exit__(exc_type, exc, tb)


class Store:
    """A derived store opened for reading (see the module docstring for the format).

    Attributes: ``path``, ``meta`` (dict), ``splits`` (name -> int64 sample indices),
    ``frame_dirs``, ``labels``, ``offsets``, ``total_frames``, ``num_person`` (arrays over all
    samples, annotation order) and ``data``, the (F, V, C) float32 memmap, opened lazily in each
    process (pickling a Store, e.g. into DataLoader workers, does not copy the data).
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"derived store not found: {self.path} (make it with `msg3d derive`)")
        missing = [n for n in (META_FILE, INDEX_FILE, SPLITS_FILE, DATA_FILE) if not (self.path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path}: not a derived store, missing {', '.join(missing)} "
                                    "(make it with `msg3d derive`)")
        self.meta = json.loads((self.path / META_FILE).read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT or self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.path}: unsupported store format {self.meta.get('format')!r} "
                             f"version {self.meta.get('format_version')!r} (expected {FORMAT} {FORMAT_VERSION})")
        with np.load(self.path / INDEX_FILE, allow_pickle=False) as index:
            self.frame_dirs = index["frame_dir"]
            self.labels = index["label"]
            self.offsets = index["offset"]
            self.total_frames = index["total_frames"]
            self.num_person = index["num_person"]
        splits = json.loads((self.path / SPLITS_FILE).read_text(encoding="utf-8"))
        self.splits = {name: np.asarray(ix, dtype=np.int64) for name, ix in splits.items()}
        self._data = None
        self._file = None
        self._check()
        self._data_offset = self.data.offset  # bytes of npy header before row 0
        self._row_shape = self.data.shape[1:]

    def _check(self):
        n = len(self.frame_dirs)
        problems = []
        if any(len(a) != n for a in (self.labels, self.offsets, self.total_frames, self.num_person)):
            problems.append("index arrays differ in length")
        elif n != self.meta.get("num_samples"):
            problems.append(f"index has {n} samples, meta says {self.meta.get('num_samples')}")
        else:
            ends = self.offsets + self.num_person * self.total_frames
            if n and (self.offsets[0] != 0 or np.any(self.offsets[1:] != ends[:-1])):
                problems.append("sample offsets are not contiguous")
            rows = int(ends[-1]) if n else 0
            shape = (rows, self.meta.get("num_joints"), self.meta.get("channels"))
            try:
                self.data
            except ValueError as exc:  # e.g. a truncated file
                raise ValueError(f"{self.path}: corrupt derived store: cannot map {DATA_FILE} ({exc})") from None
            if self.data.shape != shape or self.data.dtype != DTYPE:
                problems.append(f"{DATA_FILE} is {self.data.dtype} {self.data.shape}, index expects float32 {shape}")
        for name, ix in self.splits.items():
            if len(ix) and (ix.min() < 0 or ix.max() >= n):
                problems.append(f"split {name!r} has sample indices outside [0, {n})")
        if problems:
            raise ValueError(f"{self.path}: corrupt derived store: " + "; ".join(problems))

    @property
    def data(self):
        if self._data is None:
            self._data = np.load(self.path / DATA_FILE, mmap_mode="r", allow_pickle=False)
        return self._data

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_data"] = state["_file"] = None
        return state

    def __len__(self):
        return len(self.frame_dirs)

    def split_indices(self, split):
        """Sample indices of ``split`` (annotation order); ValueError listing the names if unknown."""
        try:
            return self.splits[split]
        except KeyError:
            raise ValueError(f"{self.path}: unknown split {split!r}; available splits: "
                             f"{', '.join(sorted(self.splits)) or 'none'}") from None

    def sample(self, i):
        """Sample ``i``'s stored sequence, a read-only (M, T, V, C) view of the memmap."""
        offset, num_person, num_frames = int(self.offsets[i]), int(self.num_person[i]), int(self.total_frames[i])
        rows = self.data[offset:offset + num_person * num_frames]
        return rows.reshape(num_person, num_frames, *self._row_shape)

    def read_sample(self, i):
        """Sample ``i``'s stored sequence as a new (M, T, V, C) float32 array, read with one pread."""
        num_person, num_frames = int(self.num_person[i]), int(self.total_frames[i])
        out = np.empty((num_person, num_frames, *self._row_shape), dtype=DTYPE)
        if out.size:
            if self._file is None:  # one unbuffered handle per process (workers reopen after unpickling)
                self._file = open(self.path / DATA_FILE, "rb", buffering=0)
            start = self._data_offset + int(self.offsets[i]) * DTYPE.itemsize * int(np.prod(self._row_shape))
            got = os.preadv(self._file.fileno(), [out], start)
            if got != out.nbytes:
                raise ValueError(f"{self.path / DATA_FILE}: truncated, sample {i} ({self.frame_dirs[i]}) "
                                 f"needs {out.nbytes} bytes at offset {start}, read {got}")
        return out


def open_store(path):
    """Open the derived store folder ``path`` (``FileNotFoundError`` / ``ValueError`` if invalid)."""
    return Store(path)
