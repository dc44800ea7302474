"""The ST-GCN Kinetics-skeleton release -> a PYSKL-style 2D annotation pickle.

``python -m msg3d convert-kinetics RAW_ROOT OUT.pkl [--parts train val] [--jobs N] [--strict]``

``RAW_ROOT`` holds ``kinetics_{train,val}/<video id>.json`` and ``kinetics_{train,val}_label.json``
(REFERENCE §14). Each kept clip becomes the array MS-G3D's ``data_gen/kinetics_gendata.py`` makes
of it (REFERENCE §14 steps 1-4), the score channel split off as PYSKL's 2D format does::

    {'frame_dir': video id, 'label': label_index,
     'keypoint': (M=2, T=300, V=18, C=2) float32,    # MS-G3D's channels 0-1 (x, y)
     'keypoint_score': (M=2, T=300, V=18) float32,   # its channel 2
     'total_frames': 300, 'clip_frames': 1 + the largest frame_index in the file (0 if none)}

1. A clip is kept when its label entry says ``has_skeleton: true`` (an all-empty clip then gives
   zeros); the file's ``label_index`` must equal the label file's.
2. ``data = zeros(3, 300, 18, 5)`` (float64); each frame entry's first 5 skeletons fill person
   slots 0-4 at ``frame_index``: x = ``pose[0::2]``, y = ``pose[1::2]``, score. A frame_index
   listed twice is written twice, the later entry over the slots it fills (MS-G3D's loop).
3. ``x - 0.5``, ``-(y - 0.5)``; x and y set to 0 where the score is 0.
4. Per frame, persons sorted by descending summed score (a stable sort of ``-sum``: ties keep
   their order; the sum runs over joints in order, as numpy sums MS-G3D's (T, V, M) array), the
   first 2 kept, cast to float32. No looping: frames after the clip stay 0.

The pickle: ``{'annotations': [...] sorted by video id, 'split': {'train': [...], 'val': [...]}
(PYSKL's K400 split names, the parts converted), 'num_classes': 1 + the largest label_index of the
label files read}``. It is written as a stream (``msg3d.fileio.write_pickle_streamed``): the full
release (~240k clips, ~31 GB) never sits in memory, and worker processes (``--jobs``) convert at
most a few chunks ahead of the writer.

Bad input (a clip file or label entry that breaks the format, a clip file without label entry,
a label_index that disagrees with the label file, the same id in both parts, a label entry with
``has_skeleton: true`` but no file) is listed in ``skipped.tsv`` beside the pickle (file, reason,
detail, as ``convert-ntu`` does); with ``--strict`` the first problem raises instead. Label
entries with ``has_skeleton: false`` are left out and counted. Every message names the file (and
frame); strict failures leave no output.
"""

import collections
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from msg3d.data.ntu_raw import PROGRESS_SECONDS, SKIPPED_TSV, available_cpus, skipped_table
from msg3d.data.splits import KINETICS_SPLITS
from msg3d.fileio import PickledList, write_pickle_streamed, write_text_atomic
from msg3d.layouts import get_layout

PARTS = KINETICS_SPLITS  # the release's parts are PYSKL's K400 split names
NUM_CLASSES = 400  # Kinetics-400: a label_index is in 0..399 (REFERENCE §14)
NUM_JOINTS = get_layout("openpose").num_joints  # OpenPose-18
# MS-G3D's kinetics_gendata.py: max_frame, num_person_in, num_person_out (REFERENCE §14 step 2, 4)
NUM_FRAMES = 300
PERSONS_IN = 5
PERSONS_OUT = 2

CHUNK_FILES = 16  # files per task sent to a worker process
CHUNKS_AHEAD = 4  # per worker: how far conversion may run ahead of the writer (bounds memory)


class KineticsFormatError(ValueError):
    """A clip or label file that breaks the release format; the message names the file (and frame)."""


# ----------------------------------------------------------------------------------------------
# one clip


def _json_type(value):
    """What a JSON value is, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _describe(value):
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return _json_type(value)


def load_json(path):
    """The JSON value of the file ``path``; ``KineticsFormatError`` naming it if it is not JSON text."""
    raw = Path(path).read_bytes()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise KineticsFormatError(
            f"{path}: malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise KineticsFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise KineticsFormatError(f"{path}: malformed JSON: nested too deeply") from None


def _finite(number):
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond float64
        return False


def _skeleton_rows(clip, source):
    """The skeletons a clip lists, validated: ``(frame, slot, pose (N, 36), score (N, 18), clip_frames)``.

    One row per skeleton in file order; ``frame``/``slot`` (int arrays) are its frame_index and
    its position in the frame's list.
    """

    def fail(where, message):
        raise KineticsFormatError(f"{source}: {where}: {message}" if where else f"{source}: {message}")

    if not isinstance(clip, dict):
        fail("", f"expected a JSON object with a 'data' list, got {_json_type(clip)}")
    if not isinstance(clip.get("data"), list):
        fail("", f"'data' must be a list of frames, got {_json_type(clip.get('data')) if 'data' in clip else 'none'}")
    entry_of, frame_of, slot_of, poses, scores = [], [], [], [], []
    clip_frames = 0
    for i, entry in enumerate(clip["data"]):
        if not isinstance(entry, dict):
            fail(f"data[{i}]", f"expected an object with 'frame_index' and 'skeleton', got {_json_type(entry)}")
        if "frame_index" not in entry:
            fail(f"data[{i}]", "no frame_index")
        index = entry["frame_index"]
        if type(index) is not int:  # bool is not int here, nor 3.0
            fail(f"data[{i}]", f"frame_index {json.dumps(index)} is not an integer")
        if not 0 <= index < NUM_FRAMES:
            fail(f"frame {index} (data[{i}])", f"frame_index outside 0..{NUM_FRAMES - 1} "
                                               f"(MS-G3D keeps {NUM_FRAMES} frames)")
        skeletons = entry.get("skeleton")
        if not isinstance(skeletons, list):
            fail(f"frame {index} (data[{i}])", f"'skeleton' must be a list, got {_describe(skeletons)}")
        clip_frames = max(clip_frames, index + 1)
        for m, skeleton in enumerate(skeletons):
            here = f"frame {index} (data[{i}]), skeleton {m}"
            if not isinstance(skeleton, dict):
                fail(here, f"expected an object with 'pose' and 'score', got {_json_type(skeleton)}")
            pose, score = skeleton.get("pose"), skeleton.get("score")
            if type(pose) is not list or len(pose) != 2 * NUM_JOINTS:
                fail(here, f"pose must be a list of {2 * NUM_JOINTS} numbers (x, y of {NUM_JOINTS} joints), "
                           f"got {_describe(pose) if 'pose' in skeleton else 'none'}")
            if type(score) is not list or len(score) != NUM_JOINTS:
                fail(here, f"score must be a list of {NUM_JOINTS} numbers, "
                           f"got {_describe(score) if 'score' in skeleton else 'none'}")
            entry_of.append(i)
            frame_of.append(index)
            slot_of.append(m)
            poses.append(pose)
            scores.append(score)

    def where(r):
        return f"frame {frame_of[r]} (data[{entry_of[r]}]), skeleton {slot_of[r]}"

    # bool is a subclass of int but no JSON number: check exact types (fast, in C) before numpy
    kinds = set(map(type, itertools.chain.from_iterable(poses))) | set(
        map(type, itertools.chain.from_iterable(scores)))
    if not kinds <= {int, float}:
        for r, values in enumerate(zip(poses, scores)):
            for key, row in zip(("pose", "score"), values):
                bad = [v for v in row if type(v) not in (int, float)]
                if bad:
                    fail(where(r), f"{key} value {json.dumps(bad[0])} is not a number")
    try:
        pose = np.array(poses, dtype=np.float64).reshape(-1, 2 * NUM_JOINTS)
        score = np.array(scores, dtype=np.float64).reshape(-1, NUM_JOINTS)
    except OverflowError:  # an integer beyond float64
        pose = score = None
    if pose is None or not (np.isfinite(pose).all() and np.isfinite(score).all()):
        for r, values in enumerate(zip(poses, scores)):
            for key, row in zip(("pose", "score"), values):
                if not all(map(_finite, row)):
                    fail(where(r), f"{key} holds a value that is not a finite number (NaN, inf or too large)")
    return np.array(frame_of, dtype=np.intp), np.array(slot_of, dtype=np.intp), pose, score, clip_frames


def msg3d_joint(clip, source="<clip>"):
    """MS-G3D's joint array of one parsed clip: ``(joint, clip_frames)``.

    ``clip`` is the JSON value of a clip file; ``joint`` is float32 ``(C=3, T=300, V=18, M=2)``
    (x, y, score), REFERENCE §14 steps 2-4 (see the module docstring); ``clip_frames`` is 1 + the
    largest frame_index listed (0 if none). Raises ``KineticsFormatError`` naming ``source`` and
    the frame for a clip that breaks the format: no ``data`` list, a frame without an integer
    ``frame_index`` in 0..299 or a ``skeleton`` list, a pose that is not 36 numbers, a score that is
    not 18, a NaN or infinite value. Every listed skeleton is checked, also those after the 5th.
    """
    frame, slot, pose, score, clip_frames = _skeleton_rows(clip, source)
    kept = np.flatnonzero(slot < PERSONS_IN)
    # a (frame, slot) listed twice keeps its last entry, as MS-G3D's sequential loop does
    cell = (frame * PERSONS_IN + slot)[kept]
    _, last_in_reverse = np.unique(cell[::-1], return_index=True)
    rows = kept[len(cell) - 1 - last_in_reverse]
    data = np.zeros((3, NUM_FRAMES, NUM_JOINTS, PERSONS_IN))  # float64, MS-G3D's (C, T, V, M)
    t, m = frame[rows], slot[rows]
    data[0, t, :, m] = pose[rows, 0::2]
    data[1, t, :, m] = pose[rows, 1::2]
    data[2, t, :, m] = score[rows]
    data[0:2] -= 0.5
    data[1] = -data[1]
    undetected = data[2] == 0
    data[0][undetected] = 0
    data[1][undetected] = 0
    # summed over V of the (T, V, M) array: numpy adds the joints one after the other, like MS-G3D
    order = np.argsort(-data[2].sum(axis=1), axis=1, kind="stable")[:, :PERSONS_OUT]  # (T, M) kept
    return np.take_along_axis(data, order[None, :, None, :], axis=3).astype(np.float32), clip_frames


def clip_label(clip, source="<clip>"):
    """The clip's ``label_index``, or None when it has none; ``KineticsFormatError`` if it is not 0..399."""
    if not isinstance(clip, dict) or "label_index" not in clip:
        return None
    label = clip["label_index"]
    if type(label) is not int or not 0 <= label < NUM_CLASSES:
        raise KineticsFormatError(f"{source}: label_index {json.dumps(label)} is not an integer in "
                                  f"0..{NUM_CLASSES - 1} (Kinetics-400)")
    return label


def video_id(path):
    """The video id of a clip file: its name without ``.json``."""
    name = Path(path).name
    return name[: -len(".json")] if name.endswith(".json") else name


def annotation(frame_dir, label, joint, clip_frames):
    """The annotation dict of a clip from MS-G3D's ``joint`` array (C=3, T, V, M) (module docstring)."""
    return {
        "frame_dir": frame_dir,
        "label": label,
        "keypoint": np.ascontiguousarray(joint[:2].transpose(3, 1, 2, 0)),  # (M, T, V, C=2)
        "keypoint_score": np.ascontiguousarray(joint[2].transpose(2, 0, 1)),  # (M, T, V)
        "total_frames": joint.shape[1],
        "clip_frames": clip_frames,
    }


def read_clip(path):
    """One Kinetics-skeleton clip file -> its annotation dict (no label file needed).

    Keys: ``frame_dir`` (the video id), ``label`` (the file's ``label_index``, or None if it has
    none), ``keypoint`` float32 (2, 300, 18, 2), ``keypoint_score`` float32 (2, 300, 18),
    ``total_frames`` (300), ``clip_frames``. Raises ``KineticsFormatError`` (see ``msg3d_joint``,
    ``clip_label``; malformed JSON) or ``OSError``, naming ``path``.
    """
    clip = load_json(path)
    joint, clip_frames = msg3d_joint(clip, str(path))
    return annotation(video_id(path), clip_label(clip, str(path)), joint, clip_frames)


# ----------------------------------------------------------------------------------------------
# label files


def read_labels(path):
    """A label file: ``(entries, problems)``, ``entries`` = video id -> ``(has_skeleton, label_index)``
    for its well-formed entries, ``problems`` = video id -> message (naming ``path``) for the others.

    A well-formed entry is an object with a boolean ``has_skeleton`` and an integer ``label_index``
    in 0..399. Raises ``KineticsFormatError`` (malformed JSON, not an object) or ``OSError``.
    """
    labels = load_json(path)
    if not isinstance(labels, dict):
        raise KineticsFormatError(f"{path}: expected a JSON object of video id -> entry, got {_json_type(labels)}")
    entries, problems = {}, {}
    for vid, entry in labels.items():
        where = f"{path}: entry {json.dumps(vid)}"
        if not isinstance(entry, dict):
            problems[vid] = f"{where}: expected an object, got {_json_type(entry)}"
        elif type(entry.get("has_skeleton")) is not bool:
            problems[vid] = f"{where}: has_skeleton {json.dumps(entry.get('has_skeleton'))} is not true or false"
        elif type(entry.get("label_index")) is not int or not 0 <= entry["label_index"] < NUM_CLASSES:
            problems[vid] = (f"{where}: label_index {json.dumps(entry.get('label_index'))} is not an integer in "
                             f"0..{NUM_CLASSES - 1} (Kinetics-400)")
        else:
            entries[vid] = (entry["has_skeleton"], entry["label_index"])
    return entries, problems


# ----------------------------------------------------------------------------------------------
# the conversion of a release


class _Task(NamedTuple):
    """One clip to convert."""

    vid: str
    part: str
    file: str  # relative to RAW_ROOT: skipped.tsv's first column
    path: str
    label: int  # the label file's label_index
    label_file: str


def _convert_task(task):
    """``(annotation, None, None)`` or ``(None, reason, detail)``; runs in worker processes."""
    try:
        clip = load_json(task.path)
        joint, clip_frames = msg3d_joint(clip, task.path)
        label = clip_label(clip, task.path)
    except (KineticsFormatError, OSError) as exc:
        return None, "unreadable", str(exc)
    if label != task.label:
        found = "has no label_index" if label is None else f"has label_index {label}"
        return None, "label-mismatch", f"{task.path}: {found}, but {task.label_file} gives {task.label}"
    return annotation(task.vid, task.label, joint, clip_frames), None, None


def _convert_chunk(tasks):
    return [_convert_task(task) for task in tasks]


def _results(tasks, jobs):
    """``_convert_task`` of each task, in order; with ``jobs`` > 1 in worker processes, at most
    ``CHUNKS_AHEAD`` chunks per worker ahead of the consumer (``Pool.imap`` would run ahead without
    bound, piling up results in memory when writing is the slower side)."""
    if jobs == 1:
        yield from map(_convert_task, tasks)
        return
    import multiprocessing  # only here: a single job does not pay for it

    size = max(1, min(CHUNK_FILES, len(tasks) // (CHUNKS_AHEAD * jobs)))  # small releases: every worker busy
    chunks = (tasks[i : i + size] for i in range(0, len(tasks), size))
    with multiprocessing.Pool(jobs) as pool:  # leaving the block terminates the workers
        pending = collections.deque(pool.apply_async(_convert_chunk, (chunk,))
                                    for chunk in itertools.islice(chunks, CHUNKS_AHEAD * jobs))
        while pending:
            results = pending.popleft().get()
            for chunk in itertools.islice(chunks, 1):
                pending.append(pool.apply_async(_convert_chunk, (chunk,)))
            yield from results


class _Release:
    """What the label files and folders of the parts hold, before any clip is read."""

    def __init__(self, raw_root, parts, strict):
        self.tasks = []  # _Task, sorted by (video id, part)
        self.skipped = []  # (file, reason, detail)
        self.no_skeleton = 0  # label entries with has_skeleton false
        self.num_classes = 0
        self.strict = strict
        for part in parts:
            self._read_part(raw_root, part)
        self._drop_duplicates()
        self.tasks.sort(key=lambda task: (task.vid, task.part))

    def skip(self, file, reason, detail):
        if self.strict:
            raise KineticsFormatError(detail)
        self.skipped.append((file, reason, detail))

    def _read_part(self, raw_root, part):
        label_path, folder = raw_root / f"kinetics_{part}_label.json", raw_root / f"kinetics_{part}"
        if not label_path.is_file():
            raise FileNotFoundError(f"label file not found: {label_path}")
        if not folder.is_dir():
            raise FileNotFoundError(f"clip folder not found: {folder}")
        entries, problems = read_labels(label_path)
        label_file = str(label_path)  # one string for all its tasks (a release has 240k)
        labels = [label for _, label in entries.values()]
        self.num_classes = max(self.num_classes, 1 + max(labels, default=-1))
        self.no_skeleton += sum(not has_skeleton for has_skeleton, _ in entries.values())
        for vid in sorted(problems):
            self.skip(f"{folder.name}/{vid}.json", "bad-label-entry", problems[vid])
        with os.scandir(folder) as found:
            files = sorted(e.name[: -len(".json")] for e in found if e.name.endswith(".json") and e.is_file())
        for vid in files:
            path = folder / f"{vid}.json"
            if vid in problems:
                continue
            if vid not in entries:
                self.skip(f"{folder.name}/{vid}.json", "not-in-label-file",
                          f"{path}: video id {json.dumps(vid)} is not in {label_path}")
            elif entries[vid][0]:
                self.tasks.append(_Task(vid, part, f"{folder.name}/{vid}.json", str(path), entries[vid][1],
                                        label_file))
        have = set(files)
        no_file = [vid for vid, (has_skeleton, _) in sorted(entries.items()) if has_skeleton and vid not in have]
        if no_file and self.strict:
            first = ", ".join(no_file[:5]) + (", ..." if len(no_file) > 5 else "")
            raise KineticsFormatError(f"{label_path}: {len(no_file)} entr{'y' if len(no_file) == 1 else 'ies'} "
                                      f"with has_skeleton true but no file in {folder} ({first})")
        for vid in no_file:
            self.skipped.append((f"{folder.name}/{vid}.json", "no-file",
                                 f"{label_path}: entry {json.dumps(vid)} has has_skeleton true, but there is no "
                                 f"{folder / (vid + '.json')}"))

    def _drop_duplicates(self):
        parts_of = collections.defaultdict(list)
        for task in self.tasks:
            parts_of[task.vid].append(task.part)
        twice = {vid for vid, parts in parts_of.items() if len(parts) > 1}
        for task in sorted((task for task in self.tasks if task.vid in twice), key=lambda task: task.file):
            self.skip(task.file, "duplicate-id",
                      f"{task.path}: video id {json.dumps(task.vid)} is in both kinetics_train and kinetics_val")
        self.tasks = [task for task in self.tasks if task.vid not in twice]


def convert_kinetics(raw_root, out_path, parts=PARTS, jobs=None, strict=False, log=None):
    """Convert the release at ``raw_root`` (its ``parts``); write ``out_path`` and ``skipped.tsv``.

    See the module docstring for the output. ``skipped.tsv`` (file relative to ``raw_root``,
    reason, detail) lists the clips not converted: ``unreadable`` (malformed JSON or clip format;
    the detail names the frame), ``label-mismatch``, ``not-in-label-file``, ``bad-label-entry``,
    ``duplicate-id`` (in both parts: both are skipped) and ``no-file`` (a label entry with
    ``has_skeleton: true`` whose file is missing). With ``strict`` the first of these raises
    ``KineticsFormatError`` and nothing is written. ``jobs`` worker processes (default: all
    available cores). Progress lines go to ``log`` (a text stream) if given. The pickle is written
    atomically, last; ``skipped.tsv`` is written just before it is complete (also when no clip was
    converted, which raises ValueError). Returns a summary dict.
    """
    raw_root, out_path = Path(raw_root), Path(out_path)
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be among {', '.join(PARTS)}, got {', '.join(map(str, parts)) or 'none'}")
    parts = [part for part in PARTS if part in parts]
    if not raw_root.is_dir():
        raise FileNotFoundError(f"Kinetics-skeleton release folder not found: {raw_root}")
    started = time.perf_counter()
    release = _Release(raw_root, parts, strict)
    tasks, skipped = release.tasks, release.skipped
    jobs = max(1, min(jobs or available_cpus(), len(tasks)))
    kept = {part: [] for part in parts}
    tsv = out_path.parent / SKIPPED_TSV

    def annotations():
        results = _results(tasks, jobs)
        last_report = start = time.perf_counter()
        try:
            for done, (task, (ann, reason, detail)) in enumerate(zip(tasks, results), 1):
                if ann is None:
                    release.skip(task.file, reason, detail)
                else:
                    kept[task.part].append(task.vid)
                    yield ann
                now = time.perf_counter()
                if log is not None and now - last_report >= PROGRESS_SECONDS:
                    last_report = now
                    print(f"convert-kinetics: {done}/{len(tasks)} files, {done / (now - start):.0f} files/s, "
                          f"{len(skipped)} skipped", file=log, flush=True)
        finally:
            results.close()  # stops the worker processes now, also on an error

    def pairs():
        yield "annotations", PickledList(annotations())
        skipped.sort()
        write_text_atomic(tsv, skipped_table(skipped))
        if not any(kept.values()):
            raise ValueError(f"no clip converted from {raw_root} ({', '.join(parts)}); see {tsv}")
        yield "split", kept
        yield "num_classes", release.num_classes

    write_pickle_streamed(out_path, pairs())
    reasons = dict(sorted(collections.Counter(reason for _, reason, _ in skipped).items()))
    summary = {
        "converted": {part: len(kept[part]) for part in parts},
        "skipped": reasons,
        "no_skeleton": release.no_skeleton,
        "num_classes": release.num_classes,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if log is not None:
        counts = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        print(f"convert-kinetics: wrote {out_path}: {sum(map(len, kept.values()))} clips "
              f"({', '.join(f'{len(kept[part])} {part}' for part in parts)}) of {release.num_classes} classes in "
              f"{summary['seconds']:.1f} s; skipped {len(skipped)}{f' ({counts})' if counts else ''}, listed in "
              f"{tsv}; left out {release.no_skeleton} label entries with has_skeleton false", file=log)
    return summary


# ----------------------------------------------------------------------------------------------
# command line


def add_arguments(parser):
    parser.add_argument("raw_root", metavar="RAW_ROOT", type=Path,
                        help="the release: kinetics_{train,val}/ and kinetics_{train,val}_label.json")
    parser.add_argument("out", metavar="OUT.pkl", type=Path,
                        help="annotation pickle to write (skipped.tsv goes beside it)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="parts to convert (default: train val)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all available cores)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on any bad clip or label entry instead of skipping it")


def run(args):
    if args.jobs is not None and args.jobs < 1:
        raise ValueError("--jobs must be >= 1")
    convert_kinetics(args.raw_root, args.out, args.parts, jobs=args.jobs, strict=args.strict, log=sys.stderr)
    return 0
