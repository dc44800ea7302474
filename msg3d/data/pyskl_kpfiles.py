"""PYSKL's Kinetics-400 HRNet poses: ``k400_hrnet.pkl`` (a table of contents) plus its kpfiles
-> a standard PYSKL 2D annotation pickle
(`msg3d import-pyskl k400_hrnet.pkl --kpfiles DIR [--box-thr 0.5] [--valid-ratio 0.0] [--max-person 10]`).

PYSKL serves K400's skeletons from memcached; this reads the kpfiles from a folder instead and
runs PYSKL's per-video selection and ``DecompressPose`` once, so the result is an ordinary
annotation pickle of COCO-17 2D poses (``--layout coco``) that ``derive`` and the GCN pipeline
take like ``ntu60_hrnet.pkl``. PYSKL itself has no GCN recipe for K400 (REFERENCE §14).

Facts (kennymckormick/pyskl; mmaction2 1.x carries the same code over):

* **Format** (``tools/data/README.md``, the Kinetics400 note): the table of contents (TOC) is
  ``{'split': {'train': [...], 'val': [...]}, 'annotations': [...]}``; each entry has
  ``frame_dir``, ``label``, ``total_frames``, ``img_shape`` (h, w) (and ``original_shape``), plus
  ``raw_file`` (path of the kpfile holding the video's skeletons), ``frame_inds`` (N,) (frame of
  each skeleton), ``box_score`` (N,) (detector box score of each skeleton) and ``valid``
  (threshold -> number of frames left when only skeletons with a box score above it are kept).
  A kpfile is a pickle ``{frame_dir: {'keypoint': (N, V, 3)}}`` (x, y pixels, joint score).
* **Lookup** (``pyskl/datasets/base.py``, ``BaseDataset.prepare_train_frames``/``prepare_test_frames``;
  ``pose_dataset.py``, ``PoseDataset.__init__`` sets ``item['key'] = item['frame_dir']``): the
  kpfile entry is fetched from memcached by ``frame_dir`` and merged into the sample; PYSKL never
  opens ``raw_file``. Here each ``raw_file`` is resolved by its base name inside ``--kpfiles DIR``
  (the paths in the released TOC are the author's) and the entry is looked up by ``frame_dir``.
* **Thresholding** (``pyskl/datasets/pose_dataset.py``, ``PoseDataset.__init__``, current form;
  mmaction2's ``PoseDataset.filter_data`` is the same): only when ``valid_ratio`` is a float
  **> 0**: videos with ``valid[box_thr] / total_frames < valid_ratio`` are dropped and the kept
  ones get ``anno_inds = box_score >= box_thr`` (a mask over their skeletons). ``box_thr`` must be
  one of 0.5, 0.6, 0.7, 0.8, 0.9 (an assert: ``valid`` has those keys). Otherwise no video is
  dropped and every skeleton is kept. (An earlier ``PoseDataset``, pyskl commit 7b9f9d95, applied
  both whenever ``valid_ratio`` was not None, so also for 0.0.)
* **K400 values** (``configs/posec3d/slowonly_r50_346_k400/joint.py``, ``slowonly_r50_463_k400/joint.py``):
  ``box_thr = 0.5``, ``valid_ratio = 0.0``, given to the *train* dataset only (val and test get
  ``box_thr`` but no ``valid_ratio``); ``DecompressPose(squeeze=True)`` with its default
  ``max_person=10`` in every pipeline. Hence the defaults here, and: with PYSKL's K400 values
  nothing is filtered; with ``valid_ratio > 0`` the threshold and the ratio apply to samples of
  training splits (``'train'`` or ``'*_train'``) only, as those configs pass it.
* **DecompressPose** (``pyskl/datasets/pipelines/pose_related.py``, ``DecompressPose.__call__``):
  1. keep the skeletons selected by ``anno_inds`` (if set);
  2. ``frame_inds`` must be non-decreasing (an assert);
  3. squeeze: each frame index becomes its rank among the distinct indices, ``T`` = number of
     distinct indices, so frames without a kept skeleton disappear and the TOC's
     ``total_frames`` is replaced;
  4. ``M`` = the largest number of skeletons in one frame (scipy's mode count);
  5. the skeletons of a frame fill person slots 0, 1, ... in kpfile order: x, y into
     ``keypoint`` (M, T, V, 2), the score into ``keypoint_score`` (M, T, V), both **float16**,
     zero where a frame has fewer persons;
  6. if ``M > max_person``: in every frame the filled slots are reordered by descending sum of
     the (float16) joint scores, ties in kpfile order (Python's stable ``sorted``), and only the
     first ``max_person`` slots are kept (``M = max_person``). With ``M <= max_person`` the kpfile
     order stays.
  ``PoseDecode`` later casts the arrays to float32. A video with no skeleton left makes step 3
  fail (``np.max`` of nothing): PYSKL cannot load it; here it is left out and counted.

Output per kept sample: ``frame_dir``, ``label``, ``total_frames`` (= T), ``keypoint`` (M, T, V, 2)
and ``keypoint_score`` (M, T, V) float32 holding exactly DecompressPose's float16 values,
``img_shape`` and ``original_shape`` when the TOC has them; annotations in TOC order, splits as
in the TOC less the samples left out. TOC samples in no split are left out (PYSKL only ever
loads a split).

Errors (``ValueError``, or ``FileNotFoundError`` for a missing kpfile or folder) name the file
and the ``frame_dir``: a TOC that is not one, a kpfile missing from the folder, a ``frame_dir``
missing from its kpfile, ``frame_inds``/``box_score`` lengths that differ from the kpfile's
skeleton count, decreasing ``frame_inds``, NaN or inf in keypoints or box scores, a missing
``valid[box_thr]`` where the ratio applies, a sample both in a training split and another split
(it would be decoded two ways, and trained and tested on).

Memory: the TOC and the output arrays; entries are grouped by kpfile so each kpfile is read once
and only one kpfile's contents is held at a time. Pickles are read with ``msg3d.safe_pickle``.
Torch-free.
"""

import collections
import time
from pathlib import Path, PurePosixPath

import numpy as np

from msg3d import safe_pickle

BOX_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)  # PoseDataset's assert: the keys of 'valid'
BOX_THR = 0.5  # K400 configs (module docstring)
VALID_RATIO = 0.0  # K400 configs: hence no thresholding by default
MAX_PERSON = 10  # DecompressPose's default, which the K400 configs keep
PROGRESS_SECONDS = 5.0
SHOWN = 5  # frame_dirs named in a summary line


def is_training_split(name):
    """Whether split ``name`` is one PYSKL's K400 configs train on (``'train'`` or ``'*_train'``)."""
    return isinstance(name, str) and (name == "train" or name.endswith("_train"))


def is_table_of_contents(data):
    """Whether ``data`` looks like a kpfile TOC: its first annotation has ``raw_file`` and
    ``frame_inds`` but no ``keypoint`` (so it needs ``--kpfiles``)."""
    annotations = data.get("annotations") if isinstance(data, dict) else None
    first = annotations[0] if isinstance(annotations, (list, tuple)) and annotations else None
    return isinstance(first, dict) and "raw_file" in first and "frame_inds" in first and "keypoint" not in first


def decompress_pose(keypoint, frame_inds, keep=None, max_person=MAX_PERSON):
    """PYSKL's ``DecompressPose(squeeze=True, max_person)`` of one video's skeletons.

    ``keypoint`` (N, V, 3): x, y, score per skeleton, in kpfile order; ``frame_inds`` (N,)
    integer frame of each skeleton; ``keep`` (N,) bool or None: PYSKL's ``anno_inds``. Returns
    ``(keypoint (M, T, V, 2), keypoint_score (M, T, V), persons)``: float32 arrays holding PYSKL's
    float16 values (steps 1-6 of the module docstring) and the largest number of kept skeletons
    in one frame (M before the ``max_person`` cut). Raises ValueError if no skeleton is kept or
    the kept ``frame_inds`` decrease (PYSKL asserts non-decreasing ones).
    """
    keypoint, frame_inds = np.asarray(keypoint), np.asarray(frame_inds)
    if keep is not None:
        keypoint, frame_inds = keypoint[keep], frame_inds[keep]
    if not len(frame_inds):
        raise ValueError("no skeleton to decode")
    if np.any(np.diff(frame_inds) < 0):
        first = int(np.argmax(np.diff(frame_inds) < 0))
        raise ValueError(f"frame_inds decrease from {frame_inds[first]} to {frame_inds[first + 1]} at kept skeleton "
                         f"index {first + 1}; PYSKL's DecompressPose needs them non-decreasing")
    # squeeze: frame = rank of the frame index among the distinct ones
    _, frame = np.unique(frame_inds, return_inverse=True)
    per_frame = np.bincount(frame)
    num_frames, num_person = len(per_frame), int(per_frame.max())
    # non-decreasing frames: a frame's skeletons are consecutive, slot = position within the run
    first_of_frame = np.cumsum(per_frame) - per_frame
    slot = np.arange(len(frame)) - first_of_frame[frame]

    num_joints = keypoint.shape[1]
    # float16 as PYSKL fills them: the values (and the score sums that rank persons) are its own
    kp = np.zeros((num_person, num_frames, num_joints, 2), dtype=np.float16)
    score = np.zeros((num_person, num_frames, num_joints), dtype=np.float16)
    kp[slot, frame] = keypoint[:, :, :2]
    score[slot, frame] = keypoint[:, :, 2]

    if num_person > max_person:
        filled = np.arange(num_person)[:, None] < per_frame[None, :]
        # descending float16 score sum among filled slots; empty slots last; stable = kpfile order on ties
        rank_key = np.where(filled, -score.sum(-1).astype(np.float64), np.inf)
        order = np.argsort(rank_key, axis=0, kind="stable")[:max_person]
        kp = np.take_along_axis(kp, order[:, :, None, None], axis=0)
        score = np.take_along_axis(score, order[:, :, None], axis=0)
    return kp.astype(np.float32), score.astype(np.float32), num_person


def _where(path, frame_dir):
    return f"{path}: {frame_dir}"


def _read_toc(toc_path):
    """The TOC dict with its entries checked for what the plan needs (ValueError naming the file)."""
    toc_path = Path(toc_path)
    if not toc_path.is_file():
        raise FileNotFoundError(f"table of contents not found: {toc_path}")
    toc = safe_pickle.load(toc_path, "a PYSKL K400 table of contents")
    if not isinstance(toc, dict) or not isinstance(toc.get("split"), dict) \
            or not isinstance(toc.get("annotations"), (list, tuple)) or not toc["annotations"]:
        raise ValueError(f"{toc_path}: not a PYSKL table of contents (expected a dict with 'split' and a non-empty "
                         "'annotations' list)")
    seen = set()
    for i, ann in enumerate(toc["annotations"]):
        frame_dir = ann.get("frame_dir") if isinstance(ann, dict) else None
        if not isinstance(frame_dir, str) or not frame_dir:
            raise ValueError(f"{toc_path}: annotations[{i}] is not a dict with a non-empty 'frame_dir'")
        if frame_dir in seen:
            raise ValueError(f"{_where(toc_path, frame_dir)}: frame_dir appears more than once in the table of contents")
        seen.add(frame_dir)
        missing = [k for k in ("label", "raw_file", "frame_inds") if k not in ann]
        if missing:
            raise ValueError(f"{_where(toc_path, frame_dir)}: missing key(s) {', '.join(missing)} "
                             "(a K400 table of contents entry has raw_file, frame_inds, box_score, valid)")
        if not isinstance(ann["raw_file"], str) or not PurePosixPath(ann["raw_file"]).name:
            raise ValueError(f"{_where(toc_path, frame_dir)}: raw_file must name a kpfile, got {ann['raw_file']!r}")
        frame_inds = np.asarray(ann["frame_inds"])
        if frame_inds.ndim != 1 or (len(frame_inds) and frame_inds.dtype.kind not in "iu"):
            raise ValueError(f"{_where(toc_path, frame_dir)}: frame_inds must be a 1-D integer array, got "
                             f"{frame_inds.dtype} with shape {frame_inds.shape}")
        if "box_score" in ann:
            box_score = np.asarray(ann["box_score"])
            if box_score.ndim != 1 or (len(box_score) and box_score.dtype.kind not in "fiu"):
                raise ValueError(f"{_where(toc_path, frame_dir)}: box_score must be a 1-D numeric array, got "
                                 f"{box_score.dtype} with shape {box_score.shape}")
            if not np.isfinite(box_score).all():
                raise ValueError(f"{_where(toc_path, frame_dir)}: box_score contains NaN or inf")
    return toc


def _training_membership(toc, toc_path):
    """frame_dir -> True (in a training split) / False (in others only); samples in no split are absent.

    Also the number of split entries that name no TOC sample (PYSKL ignores them)."""
    known = {ann["frame_dir"] for ann in toc["annotations"]}
    membership, unknown = {}, 0
    for name, members in toc["split"].items():
        if not isinstance(members, (list, tuple)):
            raise ValueError(f"{toc_path}: split {name!r} must be a list of frame_dir, got {type(members).__name__}")
        training = is_training_split(name)
        for frame_dir in members:
            if frame_dir not in known:
                unknown += 1
                continue
            if membership.get(frame_dir, training) != training:
                raise ValueError(f"{_where(toc_path, frame_dir)}: in a training split and in another split "
                                 f"(split {name!r}): it would be trained and tested on, and PYSKL decodes "
                                 "training samples with the box threshold, others without")
            membership[frame_dir] = training
    return membership, unknown


def _passes_valid_ratio(ann, toc_path, box_thr, valid_ratio):
    """PoseDataset's video filter: ``valid[box_thr] / total_frames >= valid_ratio``."""
    frame_dir = ann["frame_dir"]
    valid, total = ann.get("valid"), ann.get("total_frames")
    if not isinstance(valid, dict) or box_thr not in valid:
        keys = ", ".join(map(repr, valid)) if isinstance(valid, dict) else "no 'valid' dict"
        raise ValueError(f"{_where(toc_path, frame_dir)}: needs valid[{box_thr}] for --valid-ratio {valid_ratio} "
                         f"(found: {keys})")
    if "box_score" not in ann:
        raise ValueError(f"{_where(toc_path, frame_dir)}: needs box_score for --valid-ratio {valid_ratio}")
    if not isinstance(total, (int, np.integer)) or isinstance(total, bool) or total < 1:
        raise ValueError(f"{_where(toc_path, frame_dir)}: total_frames must be a positive integer, got {total!r}")
    return valid[box_thr] / total >= valid_ratio


def _skeletons(kpfile, path, frame_dir, toc_path, ann):
    """The kpfile's (N, V, 3) skeletons of ``frame_dir``, checked against its TOC entry."""
    entry = kpfile.get(frame_dir)
    if entry is None:
        raise ValueError(f"{_where(path, frame_dir)}: frame_dir missing from this kpfile ({len(kpfile)} entries), "
                         f"which raw_file {ann['raw_file']!r} in {toc_path} names")
    keypoint = entry.get("keypoint") if isinstance(entry, dict) else None
    if not isinstance(keypoint, np.ndarray):
        raise ValueError(f"{_where(path, frame_dir)}: expected {{'keypoint': (N, V, 3) array}}, got "
                         f"{type(entry).__name__} with {type(keypoint).__name__} keypoint")
    if keypoint.ndim != 3 or keypoint.shape[2] != 3 or keypoint.dtype.kind not in "fiu":
        raise ValueError(f"{_where(path, frame_dir)}: keypoint must be a (N, V, 3) numeric array (x, y, score), "
                         f"got {keypoint.dtype} with shape {keypoint.shape}")
    if not np.isfinite(keypoint).all():
        raise ValueError(f"{_where(path, frame_dir)}: keypoint contains NaN or inf")
    for key in ("frame_inds", "box_score"):
        if key in ann and len(ann[key]) != len(keypoint):
            raise ValueError(f"{_where(toc_path, frame_dir)}: {key} has {len(ann[key])} entries but kpfile {path} "
                             f"holds {len(keypoint)} skeletons for it")
    return keypoint


def _named(frame_dirs):
    shown = ", ".join(frame_dirs[:SHOWN])
    return shown + (f" and {len(frame_dirs) - SHOWN} more" if len(frame_dirs) > SHOWN else "")


def import_kpfiles(toc_path, kpfiles_dir, *, box_thr=BOX_THR, valid_ratio=VALID_RATIO, max_person=MAX_PERSON,
                   log=None):
    """Decode PYSKL's K400 TOC ``toc_path`` with the kpfiles in ``kpfiles_dir``; return ``(data, summary)``.

    ``data`` is a standard PYSKL 2D annotation dict (module docstring; validate it with
    ``pyskl_io.validate_annotations``). ``summary`` holds ``kpfiles`` (number read), ``decoded``,
    the frame_dir lists ``below_valid_ratio``, ``no_skeleton``, ``no_split``, ``over_max_person``,
    ``unknown_split_entries`` (a count), ``thresholded`` (bool) and ``notes`` (one line each, for
    ``pyskl_io.summarize``). ``box_thr`` in ``BOX_THRESHOLDS``; thresholding only with
    ``valid_ratio > 0`` and only on training splits (module docstring). Progress lines go to
    ``log`` (a text stream) if given. Errors: see the module docstring.
    """
    toc_path, kpfiles_dir = Path(toc_path), Path(kpfiles_dir)
    if box_thr not in BOX_THRESHOLDS:
        raise ValueError(f"box_thr must be one of {', '.join(map(str, BOX_THRESHOLDS))} (PYSKL's), got {box_thr}")
    if not valid_ratio >= 0:
        raise ValueError(f"valid_ratio must be >= 0, got {valid_ratio}")
    if max_person < 1:
        raise ValueError(f"max_person must be >= 1, got {max_person}")
    if not kpfiles_dir.is_dir():
        raise FileNotFoundError(f"kpfiles folder not found: {kpfiles_dir}")
    started = time.monotonic()
    toc = _read_toc(toc_path)
    membership, unknown = _training_membership(toc, toc_path)
    thresholding = valid_ratio > 0

    # plan: which entries to decode, with which mask, grouped by kpfile (each read once)
    summary = {"below_valid_ratio": [], "no_skeleton": [], "no_split": [], "over_max_person": []}
    groups = collections.defaultdict(list)  # kpfile name -> [(TOC index, keep mask or None)]
    for i, ann in enumerate(toc["annotations"]):
        frame_dir = ann["frame_dir"]
        if frame_dir not in membership:
            summary["no_split"].append(frame_dir)
            continue
        keep = None
        if thresholding and membership[frame_dir]:
            if not _passes_valid_ratio(ann, toc_path, box_thr, valid_ratio):
                summary["below_valid_ratio"].append(frame_dir)
                continue
            keep = np.asarray(ann["box_score"]) >= box_thr  # the TOC's dtype, as PYSKL compares
        groups[PurePosixPath(ann["raw_file"]).name].append((i, keep))
    for name, entries in groups.items():
        if not (kpfiles_dir / name).is_file():
            first = toc["annotations"][entries[0][0]]
            raise FileNotFoundError(f"{kpfiles_dir / name}: kpfile not found, named by raw_file {first['raw_file']!r} "
                                    f"of {first['frame_dir']} (and {len(entries) - 1} more sample(s)) in {toc_path}")

    decoded = {}  # TOC index -> output annotation
    todo, last = sum(map(len, groups.values())), time.monotonic()
    for number, (name, entries) in enumerate(groups.items(), 1):
        path = kpfiles_dir / name
        kpfile = safe_pickle.load(path, "a PYSKL kpfile")
        if not isinstance(kpfile, dict):
            raise ValueError(f"{path}: not a PYSKL kpfile (expected a dict frame_dir -> {{'keypoint': ...}}, "
                             f"got {type(kpfile).__name__})")
        for i, keep in entries:
            ann = toc["annotations"][i]
            frame_dir = ann["frame_dir"]
            skeletons = _skeletons(kpfile, path, frame_dir, toc_path, ann)
            if not (len(skeletons) if keep is None else keep.sum()):
                summary["no_skeleton"].append(frame_dir)
                continue
            try:
                keypoint, score, persons = decompress_pose(skeletons, ann["frame_inds"], keep, max_person)
            except ValueError as exc:
                raise ValueError(f"{_where(toc_path, frame_dir)}: {exc}") from None
            if persons > max_person:
                summary["over_max_person"].append(frame_dir)
            out = {"frame_dir": frame_dir, "label": ann["label"], "total_frames": keypoint.shape[1],
                   "keypoint": keypoint, "keypoint_score": score}
            for key in ("img_shape", "original_shape"):
                if key in ann:
                    out[key] = ann[key]
            decoded[i] = out
        del kpfile  # one kpfile's contents at a time
        now = time.monotonic()
        if log is not None and (now - last >= PROGRESS_SECONDS or number == len(groups)):
            last = now
            print(f"import-pyskl: kpfile {number}/{len(groups)} ({name}), {len(decoded)}/{todo} samples decoded, "
                  f"{len(decoded) / max(now - started, 1e-9):.0f} samples/s", file=log, flush=True)

    annotations = [decoded[i] for i in sorted(decoded)]
    kept = {ann["frame_dir"] for ann in annotations}
    splits = {name: [m for m in members if m in kept] for name, members in toc["split"].items()}
    summary.update(kpfiles=len(groups), decoded=len(annotations), unknown_split_entries=unknown,
                   thresholded=thresholding)
    summary["notes"] = _notes(summary, kpfiles_dir, box_thr, valid_ratio, max_person, splits)
    if not annotations:
        raise ValueError(f"{toc_path}: no sample left to decode ({len(summary['no_split'])} in no split, "
                         f"{len(summary['below_valid_ratio'])} below --valid-ratio {valid_ratio}, "
                         f"{len(summary['no_skeleton'])} without any skeleton)")
    return {"split": splits, "annotations": annotations}, summary


def _notes(summary, kpfiles_dir, box_thr, valid_ratio, max_person, splits):
    notes = [f"decoded {summary['decoded']} sample(s) from {summary['kpfiles']} kpfile(s) in {kpfiles_dir} with "
             f"PYSKL's DecompressPose(squeeze=True, max_person={max_person}): its float16 values, stored as float32"]
    if summary["thresholded"]:
        training = ", ".join(repr(name) for name in splits if is_training_split(name)) or "none"
        notes.append(f"training split(s) {training}: skeletons with box_score >= {box_thr} kept; "
                     f"{len(summary['below_valid_ratio'])} video(s) with valid[{box_thr}] / total_frames < "
                     f"{valid_ratio} left out" + (f" ({_named(summary['below_valid_ratio'])})"
                                                   if summary["below_valid_ratio"] else ""))
    else:
        notes.append("no box-score threshold or valid-ratio filtering: PYSKL applies them only with "
                     "valid_ratio > 0, and its K400 configs use 0.0")
    if summary["over_max_person"]:
        notes.append(f"{len(summary['over_max_person'])} sample(s) have more than {max_person} persons in a frame: "
                     f"per frame the {max_person} with the highest summed joint score kept "
                     f"({_named(summary['over_max_person'])})")
    if summary["no_skeleton"]:
        notes.append(f"{len(summary['no_skeleton'])} sample(s) without any skeleton left out (PYSKL's "
                     f"DecompressPose cannot decode them): {_named(summary['no_skeleton'])}")
    if summary["no_split"]:
        notes.append(f"{len(summary['no_split'])} sample(s) in no split left out: {_named(summary['no_split'])}")
    if summary["unknown_split_entries"]:
        notes.append(f"{summary['unknown_split_entries']} split entries name no sample of the table of contents: "
                     "ignored, as PYSKL's PoseDataset does")
    return notes
