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
deriving never holds the output in memory. Opening checks every file (``Store``), so a damaged
store reads as one line naming the store and the file, before any training or testing starts.
Torch-free.
"""

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format

from msg3d.fileio import atomic_path, write_json_atomic
from msg3d.layouts import LAYOUTS

DATA_FILE = "data.npy"
INDEX_FILE = "index.npz"
SPLITS_FILE = "splits.json"
META_FILE = "meta.json"
FORMAT = "msg3d-derived-store"
FORMAT_VERSION = 1
DTYPE = np.dtype("<f4")

# meta.json keys the readers rely on: (type, least value of an int)
_META_KEYS = {"format": (str, None), "format_version": (int, 1), "layout": (str, None), "num_samples": (int, 0),
              "num_rows": (int, 0), "num_joints": (int, 1), "channels": (int, 1), "num_classes": (int, 1)}
# index.npz arrays, one value per sample: numpy dtype kinds allowed
_INDEX_ARRAYS = {"frame_dir": "U", "label": "iu", "offset": "iu", "total_frames": "iu", "num_person": "iu"}


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
        """Write index, splits (name -> frame_dirs, stored as ascending sample indices) and meta.

        ValueError, and no store, if a split lists an unknown frame_dir or a label is outside
        ``[0, meta['num_classes'])``: what ``open_store`` refuses is never written.
        """
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
        _check_labels(self.out_dir, self.frame_dirs, self.labels, meta["num_classes"])

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
        write_json_atomic(self.tmp / META_FILE, meta)
        self._finished = True

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._finished:
            exc = RuntimeError("StoreWriter closed without finish(): no store written")
            self._stack.__exit__(type(exc), exc, None)
            raise exc
        return self._stack.__exit__(exc_type, exc, tb)


def _json(data):
    return json.loads(data.decode("utf-8"))


def _check_labels(where, frame_dirs, labels, num_classes):
    """ValueError naming the first sample whose label is outside [0, num_classes)."""
    bad = np.flatnonzero((np.asarray(labels) < 0) | (np.asarray(labels) >= num_classes))
    if len(bad):
        i = int(bad[0])
        more = f" (and {len(bad) - 1} more sample(s))" if len(bad) > 1 else ""
        raise ValueError(f"{where}: sample {i} ({frame_dirs[i]}) has label {labels[i]}, but the store has "
                         f"num_classes {num_classes}: labels must be in [0, {num_classes}){more}")


class Store:
    """A derived store opened for reading (see the module docstring for the format).

    Attributes: ``path``, ``meta`` (dict), ``splits`` (name -> int64 sample indices),
    ``frame_dirs``, ``labels``, ``offsets``, ``total_frames``, ``num_person`` (arrays over all
    samples, annotation order) and ``data``, the (F, V, C) float32 memmap, opened lazily in each
    process (pickling a Store, e.g. into DataLoader workers, does not copy the data).

    Opening checks the whole folder, so that training and testing fail at once, with one line
    naming the store and the file, rather than deep inside a loader: ``FileNotFoundError`` if
    ``path`` is not a folder; ``ValueError`` for a missing file, a file that does not parse
    (truncated, overwritten), a ``meta.json`` without the keys and types readers rely on, index
    arrays of the wrong kind or length, sample rows outside ``data.npy``, a ``data.npy`` of the
    wrong shape or size, split indices that are not ascending sample indices, a label outside
    ``[0, num_classes)``. ``OSError`` (permissions, I/O) propagates and names the file.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"derived store not found: {self.path} (make it with `msg3d derive`)")
        missing = [n for n in (META_FILE, INDEX_FILE, SPLITS_FILE, DATA_FILE) if not (self.path / n).is_file()]
        if missing:
            raise ValueError(f"{self.path}: not a derived store, missing {', '.join(missing)} "
                             "(make it with `msg3d derive`)")
        self.meta = self._read_meta()
        index = self._read_index()
        self.frame_dirs, self.labels = index["frame_dir"], index["label"]
        self.offsets, self.total_frames, self.num_person = index["offset"], index["total_frames"], index["num_person"]
        self.splits = self._read_splits()
        self._data = None
        self._file = None
        self._check()
        self._data_offset = self.data.offset  # bytes of npy header before row 0
        self._row_shape = self.data.shape[1:]

    def _damaged(self, problem):
        return ValueError(f"{self.path}: corrupt derived store: {problem}; rebuild it with `msg3d derive`")

    def _parse(self, name, what, parse):
        """``parse(bytes)`` of the store's file ``name``; a file it cannot parse is store damage."""
        data = (self.path / name).read_bytes()  # an OSError here names the file itself
        try:
            return parse(data)
        except Exception as exc:  # damaged bytes can make a parser raise almost anything
            problem = f"{type(exc).__name__}: {exc}"
            raise self._damaged(f"{name} is not {what}, truncated or overwritten? ({problem})") from None

    def _read_meta(self):
        meta = self._parse(META_FILE, "valid UTF-8 JSON", _json)
        if not isinstance(meta, dict):
            raise self._damaged(f"{META_FILE} holds a JSON {type(meta).__name__}, not an object")
        absent = [key for key in _META_KEYS if key not in meta]
        if absent:
            raise self._damaged(f"{META_FILE} lacks {', '.join(absent)}")
        for key, (kind, least) in _META_KEYS.items():
            value = meta[key]
            if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise self._damaged(f"{META_FILE}: {key} is {value!r}, expected an integer >= {least}")
            if kind is str and not isinstance(value, str):
                raise self._damaged(f"{META_FILE}: {key} is {value!r}, expected a string")
        if meta["format"] != FORMAT or meta["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{self.path}: unsupported store format {meta['format']!r} version "
                             f"{meta['format_version']!r} in {META_FILE} (expected {FORMAT} {FORMAT_VERSION})")
        if meta["layout"] not in LAYOUTS:
            raise self._damaged(f"{META_FILE}: layout {meta['layout']!r} is not one of {', '.join(LAYOUTS)}")
        return meta

    def _read_index(self):
        def load(data):
            with np.load(io.BytesIO(data), allow_pickle=False) as index:
                return {key: index[key] for key in index.files if key in _INDEX_ARRAYS}

        index = self._parse(INDEX_FILE, "a valid .npz", load)
        absent = [key for key in _INDEX_ARRAYS if key not in index]
        if absent:
            raise self._damaged(f"{INDEX_FILE} lacks the array(s) {', '.join(absent)}")
        for key, kinds in _INDEX_ARRAYS.items():
            array = index[key]
            if array.ndim != 1 or array.dtype.kind not in kinds:
                raise self._damaged(f"{INDEX_FILE}: {key} is a {array.dtype} array of shape {array.shape}, "
                                    f"expected one {'string' if kinds == 'U' else 'integer'} per sample")
        lengths = {key: len(array) for key, array in index.items()}
        if len(set(lengths.values())) != 1:
            raise self._damaged(f"{INDEX_FILE}: index arrays differ in length ({lengths})")
        n = lengths["frame_dir"]
        if n != self.meta["num_samples"]:
            raise self._damaged(f"{INDEX_FILE} has {n} samples, {META_FILE} says {self.meta['num_samples']}")
        return {key: array.astype(np.int64) if key != "frame_dir" else array for key, array in index.items()}

    def _read_splits(self):
        splits = self._parse(SPLITS_FILE, "valid UTF-8 JSON", _json)
        if not isinstance(splits, dict):
            raise self._damaged(f"{SPLITS_FILE} holds a JSON {type(splits).__name__}, not an object")
        out = {}
        for name, members in splits.items():
            ix = np.asarray(members) if isinstance(members, list) else None
            if ix is None or ix.ndim != 1 or (len(ix) and ix.dtype.kind != "i"):
                raise self._damaged(f"{SPLITS_FILE}: split {name!r} is not a list of sample indices")
            out[name] = ix.astype(np.int64)
        return out

    def _check(self):
        n = len(self.frame_dirs)
        meta = self.meta

        def first(mask):  # the first sample where mask holds, and how to name it
            i = int(np.flatnonzero(mask)[0])
            return i, f"{INDEX_FILE}: sample {i} ({self.frame_dirs[i]})"

        for key, values in (("total_frames", self.total_frames), ("num_person", self.num_person),
                            ("offset", self.offsets)):
            if np.any(values < 0):
                i, sample = first(values < 0)
                raise self._damaged(f"{sample} has {key} {values[i]}")
        if len(np.unique(self.frame_dirs)) != n:
            names, counts = np.unique(self.frame_dirs, return_counts=True)
            raise self._damaged(f"{INDEX_FILE}: frame_dir {names[counts > 1][0]} appears more than once")
        try:
            self.data
        except OSError:
            raise  # permissions, I/O: the message names the file
        except Exception as exc:  # e.g. a truncated file or a damaged npy header
            problem = f"{type(exc).__name__}: {exc}"
            raise self._damaged(f"cannot map {DATA_FILE}, truncated or overwritten? ({problem})") from None
        data_rows = self.data.shape[0] if self.data.ndim else 0
        ends = self.offsets + self.num_person * self.total_frames
        if np.any(ends > data_rows):
            i, sample = first(ends > data_rows)
            raise self._damaged(f"{sample} occupies rows {self.offsets[i]}..{ends[i]}, beyond the {data_rows} "
                                f"rows of {DATA_FILE}")
        if n and (self.offsets[0] != 0 or np.any(self.offsets[1:] != ends[:-1])):
            raise self._damaged(f"{INDEX_FILE}: sample offsets are not contiguous")
        rows = int(ends[-1]) if n else 0
        if rows != meta["num_rows"]:
            raise self._damaged(f"{INDEX_FILE} ends at row {rows}, {META_FILE} says num_rows {meta['num_rows']}")
        shape = (rows, meta["num_joints"], meta["channels"])
        if self.data.shape != shape or self.data.dtype != DTYPE or not self.data.flags.c_contiguous:
            raise self._damaged(f"{DATA_FILE} is {self.data.dtype} {self.data.shape}, index expects float32 {shape}")
        size, expected = os.stat(self.path / DATA_FILE).st_size, self.data.offset + self.data.nbytes
        if size != expected:
            raise self._damaged(f"{DATA_FILE} has {size} bytes, its header and the index need {expected}")
        if LAYOUTS[meta["layout"]].num_joints != meta["num_joints"]:
            raise self._damaged(f"{META_FILE}: layout {meta['layout']!r} has {LAYOUTS[meta['layout']].num_joints} "
                                f"joints, num_joints is {meta['num_joints']}")
        for name, ix in self.splits.items():
            if len(ix) and (ix.min() < 0 or ix.max() >= n):
                raise self._damaged(f"{SPLITS_FILE}: split {name!r} has sample indices outside [0, {n})")
            if np.any(np.diff(ix) <= 0):
                raise self._damaged(f"{SPLITS_FILE}: split {name!r} is not in ascending sample order")
        _check_labels(self.path, self.frame_dirs, self.labels, meta["num_classes"])

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
        """Sample ``i``'s stored sequence as a new (M, T, V, C) float32 array, read with one pread.

        ``data.npy`` was checked at open; if it has shrunk since (a copy over it, a full disk), the
        short read is a ``ValueError`` naming the store and the sample, and a read error an
        ``OSError`` naming them too.
        """
        num_person, num_frames = int(self.num_person[i]), int(self.total_frames[i])
        out = np.empty((num_person, num_frames, *self._row_shape), dtype=DTYPE)
        if out.size:
            sample = f"sample {i} ({self.frame_dirs[i]})"
            start = self._data_offset + int(self.offsets[i]) * DTYPE.itemsize * int(np.prod(self._row_shape))
            try:
                if self._file is None:  # one unbuffered handle per process (workers reopen after unpickling)
                    self._file = open(self.path / DATA_FILE, "rb", buffering=0)
                got = os.preadv(self._file.fileno(), [out], start)
            except OSError as exc:  # e.g. EIO on a bad block: say which store and sample
                raise OSError(f"{self.path}: cannot read {DATA_FILE} for {sample}: {exc}") from exc
            if got != out.nbytes:
                raise self._damaged(f"{DATA_FILE} is truncated: {sample} needs {out.nbytes} bytes at offset "
                                    f"{start}, read {got}")
        return out


def open_store(path):
    """Open the derived store folder ``path``: ``FileNotFoundError`` if it is not a folder,
    ``ValueError`` naming the store and the file if it is damaged (see ``Store``)."""
    return Store(path)
