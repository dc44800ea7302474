"""PYSKL annotation pickles: load, validate, summarise
(`msg3d import-pyskl ANN.pkl [--out OUT.pkl] [--dataset {ntu60,ntu120}]`).

Accepts PYSKL's released ``ntu{60,120}_3danno.pkl`` (3D) and ``ntu{60,120}_hrnet.pkl`` (HRNet 2D)
and our own ``convert-ntu`` output (REFERENCE §4.1)::

    {'split': {split_name: [frame_dir, ...]},
     'annotations': [{'frame_dir': str, 'label': int, 'total_frames': T,
                      'keypoint': (M, T, V, C) float,            # 3D: C=3; 2D: C=2 pixels
                      'keypoint_score': (M, T, V) float,         # 2D only
                      'img_shape': (h, w), 'original_shape': (h, w)}, ...]}   # 2D, optional

Two variants that PYSKL's pipeline accepts are taken too, and converted to the form above (a note
in the summary says so): 2D keypoints with the score packed as a third channel ``(M, T, V, 3)`` and
no ``keypoint_score`` (PYSKL's ``PreNormalize2D`` reads the score from channel 3 then) are split
into ``keypoint`` (x, y) and ``keypoint_score``; integer pixel keypoints (2D) are cast to float32.
A 3-channel sample without ``keypoint_score`` is 2D, not 3D (x, y, z), when it carries
``img_shape``/``original_shape`` (2D-only keys) or its joint count is a 2D layout's only (COCO's 17).

Validation collects every problem it finds (keys, types, shapes, dtypes, label range, split
names and members) and reports them together by ``frame_dir``, capped to a readable number. An
import (``import-pyskl``) also refuses samples on both sides of a ``X_train``/``X_val`` pair (each
number would be inflated). Given the release (``ntu60``/``ntu120``), labels must be below its class
count and split names its own (``msg3d.data.splits``).

PYSKL's K400 table of contents (``k400_hrnet.pkl``, poses kept apart in "kpfiles") is imported
with ``--kpfiles DIR``: ``msg3d.data.pyskl_kpfiles`` decodes it into the 2D form above.

The pickle is read with ``msg3d.safe_pickle`` (containers, numpy arrays and scalars only), so a
file from elsewhere cannot run code. Torch-free.
"""

import collections
from pathlib import Path

import numpy as np

from msg3d import safe_pickle
from msg3d.data.splits import NUM_ACTIONS, SPLIT_NAMES
from msg3d.fileio import write_pickle_atomic
from msg3d.layouts import LAYOUTS

MAX_REPORTED = 20

# Split names that identify the dataset, hence the number of classes labels must stay below.
_SPLIT_NUM_CLASSES = {"xview_train": 60, "xview_val": 60, "xset_train": 120, "xset_val": 120}

# Joint counts of 2D layouts that no 3D layout has: 3 channels with such a count are x, y, score.
_2D_ONLY_JOINTS = ({layout.num_joints for layout in LAYOUTS.values() if not layout.is_3d}
                   - {layout.num_joints for layout in LAYOUTS.values() if layout.is_3d})


class _Problems:
    """Collects problems and raises them together, the first ``MAX_REPORTED`` spelled out."""

    def __init__(self, source):
        self.source = source
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")

    def raise_if_any(self):
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED]
        more = len(self.items) - len(shown)
        lines = "\n".join(f"  {item}" for item in shown)
        if more:
            lines += f"\n  ... and {more} more problem(s)"
        raise ValueError(f"{self.source}: invalid annotation file, {len(self.items)} problem(s):\n{lines}")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_hw(value):
    return (isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2
            and all(_is_int(v) and v > 0 for v in value))


def _is_packed_2d(ann, channels, num_joints):
    """Whether a sample holds 2D keypoints with the score packed as channel 3 (see module docstring)."""
    return (channels == 3 and ann.get("keypoint_score") is None
            and ("img_shape" in ann or "original_shape" in ann or num_joints in _2D_ONLY_JOINTS))


def _check_sample(i, ann, problems, num_classes):
    """Check one annotation dict; return its (frame_dir, kind, V, conversions) or None when unusable.

    ``conversions`` names the accepted variants to convert: "int" (integer 2D pixels), "packed"."""
    if not isinstance(ann, dict):
        problems.add(f"annotations[{i}]", f"expected a dict, got {type(ann).__name__}")
        return None
    frame_dir = ann.get("frame_dir")
    if not isinstance(frame_dir, str) or not frame_dir:
        problems.add(f"annotations[{i}]", f"missing or empty 'frame_dir' (got {frame_dir!r})")
        return None
    where = frame_dir
    missing = [k for k in ("label", "total_frames", "keypoint") if k not in ann]
    if missing:
        problems.add(where, f"missing key(s) {', '.join(missing)}")
        return None

    label = ann["label"]
    if not _is_int(label) or label < 0:
        problems.add(where, f"label must be a non-negative integer, got {label!r}")
    elif num_classes is not None and label >= num_classes:
        problems.add(where, f"label {label} out of range for {num_classes} classes")

    total = ann["total_frames"]
    if not _is_int(total) or total < 1:
        problems.add(where, f"total_frames must be a positive integer, got {total!r}")
        total = None

    kp = ann["keypoint"]
    if not isinstance(kp, np.ndarray):
        problems.add(where, f"keypoint must be a numpy array, got {type(kp).__name__}")
        return None
    if kp.ndim != 4:
        problems.add(where, f"keypoint must be (M, T, V, C), got shape {kp.shape}")
        return None
    num_person, num_frames, num_joints, channels = kp.shape
    packed = _is_packed_2d(ann, channels, num_joints)
    conversions = ("packed",) if packed else ()
    if kp.dtype.kind in "iu" and (channels == 2 or packed):
        conversions = ("int", *conversions)  # pixels some detectors write as integers
    elif kp.dtype.kind != "f":
        problems.add(where, f"keypoint dtype must be floating, got {kp.dtype}")
        return None
    # M = 0 (no person detected) is legal: PYSKL feeds such samples as all-zero input
    if num_joints < 1:
        problems.add(where, f"keypoint has no joints, shape {kp.shape}")
        return None
    if total is not None and num_frames != total:
        problems.add(where, f"keypoint has {num_frames} frames but total_frames is {total}")
    if not np.isfinite(kp).all():
        problems.add(where, "keypoint contains NaN or inf")

    score = ann.get("keypoint_score")
    if channels == 3 and not packed:
        kind = "3d"
        if score is not None:
            problems.add(where, "keypoint_score given with 3-channel keypoint (2D keypoints have C=2)")
    elif channels in (2, 3):
        kind = "2d"
        if not packed:  # a packed score is channel 3, checked with the keypoints
            if score is None:
                problems.add(where, "2D keypoint (C=2) without keypoint_score")
            elif not isinstance(score, np.ndarray) or score.dtype.kind != "f":
                problems.add(where, "keypoint_score must be a floating numpy array")
            elif score.shape != kp.shape[:3]:
                problems.add(where, f"keypoint_score shape {score.shape} != keypoint (M, T, V) {kp.shape[:3]}")
            elif not np.isfinite(score).all():
                problems.add(where, "keypoint_score contains NaN or inf")
        for key in ("img_shape", "original_shape"):
            if key in ann and not _is_hw(ann[key]):
                problems.add(where, f"{key} must be (height, width) positive integers, got {ann[key]!r}")
    else:
        problems.add(where, f"keypoint must have 3 (x, y, z) or 2 (x, y) channels, got {channels}")
        return None
    return frame_dir, kind, num_joints, conversions


def _convert(ann, conversions):
    """Bring an accepted PYSKL variant to the documented form (in place)."""
    if "int" in conversions:
        ann["keypoint"] = ann["keypoint"].astype(np.float32)
    if "packed" in conversions:
        kp = ann["keypoint"]
        ann["keypoint"], ann["keypoint_score"] = np.ascontiguousarray(kp[..., :2]), np.ascontiguousarray(kp[..., 2])


def _conversion_notes(converted):
    """Summary lines for the converted samples: ``converted`` maps conversion -> frame_dirs."""
    notes = []
    if converted["packed"]:
        notes.append(f"{len(converted['packed'])} sample(s) hold 2D keypoints with the score packed as channel 3 "
                     "(M, T, V, 3) and no keypoint_score, as PYSKL's PreNormalize2D reads them: split into "
                     f"keypoint (x, y) and keypoint_score (first: {converted['packed'][0]})")
    if converted["int"]:
        notes.append(f"{len(converted['int'])} sample(s) hold integer pixel keypoints: cast to float32 "
                     f"(first: {converted['int'][0]})")
    return notes


def _implied_num_classes(splits):
    counts = {_SPLIT_NUM_CLASSES[name] for name in splits if name in _SPLIT_NUM_CLASSES}
    return min(counts) if counts else None


def _check_leakage(splits, problems):
    """A sample on both sides of a split pair (``X_train``, ``X_val``) would be trained and tested on."""
    for name, train in splits.items():
        if not (isinstance(name, str) and name.endswith("_train") and isinstance(train, (list, tuple))):
            continue
        val_name = name[:-len("_train")] + "_val"
        val = splits.get(val_name)
        if not isinstance(val, (list, tuple)):
            continue
        val_members = {m for m in val if isinstance(m, str)}
        both = list(dict.fromkeys(m for m in train if isinstance(m, str) and m in val_members))
        if both:
            shown = ", ".join(both[:MAX_REPORTED]) + (f" and {len(both) - MAX_REPORTED} more"
                                                      if len(both) > MAX_REPORTED else "")
            problems.add(f"split {name!r}", f"{len(both)} sample(s) are in both {name!r} and {val_name!r} "
                                            f"(trained on and tested on, inflating every number): {shown}")


def check_release(data, source, dataset):
    """Raise a ValueError unless a validated annotation dict fits NTU release ``dataset``.

    Its labels must be < ``NUM_ACTIONS[dataset]`` (60 or 120 classes) and its split names among
    ``SPLIT_NAMES[dataset]`` (``msg3d.data.splits``, PYSKL's names); the message names ``source``
    and the first offending sample (or split).
    """
    if dataset not in NUM_ACTIONS:
        raise ValueError(f"unknown NTU release {dataset!r}; expected one of {', '.join(NUM_ACTIONS)}")
    num_classes = NUM_ACTIONS[dataset]
    out = [a for a in data["annotations"] if a["label"] >= num_classes]
    if out:
        first = out[0]
        more = f" (and {len(out) - 1} more sample(s) with labels >= {num_classes})" if len(out) > 1 else ""
        raise ValueError(f"{source}: declared {dataset}, but {first['frame_dir']} has label {first['label']} "
                         f"(action {first['label'] + 1}){more}; {dataset} labels are < {num_classes}")
    foreign = [name for name in data["split"] if name not in SPLIT_NAMES[dataset]]
    if foreign:
        raise ValueError(f"{source}: declared {dataset}, but it has split(s) {', '.join(map(repr, foreign))}; "
                         f"{dataset} splits are {', '.join(SPLIT_NAMES[dataset])}")


def validate_annotations(data, source="<annotations>", num_classes=None, dataset=None, disjoint_splits=False):
    """Validate a PYSKL annotation dict, converting accepted variants in place; return notes on them.

    Raises ``ValueError`` listing every problem. ``num_classes`` bounds the labels; if None, the
    dict's optional ``'num_classes'`` entry or the split names (xview -> NTU60: 60, xset -> NTU120:
    120) are used when present. ``dataset`` (``'ntu60'``/``'ntu120'``), if given, is the release the
    file must fit (``check_release``). With ``disjoint_splits`` (implied by ``dataset``: a release's
    pairs never overlap) a sample on both sides of a split pair ``X_train``/``X_val`` is a problem:
    it would be trained and tested on. Toy files may overlap on purpose, so only imports check it.
    The variants of the module docstring are converted only when the whole file is valid; the
    returned list holds one summary line per kind of conversion.
    """
    problems = _Problems(source)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a dict with 'split' and 'annotations', got {type(data).__name__}")
    missing = [k for k in ("split", "annotations") if k not in data]
    if missing:
        raise ValueError(f"{source}: missing top-level key(s) {', '.join(missing)} "
                         f"(found {', '.join(map(str, data)) or 'none'})")
    splits, annotations = data["split"], data["annotations"]
    if not isinstance(annotations, (list, tuple)) or not annotations:
        raise ValueError(f"{source}: 'annotations' must be a non-empty list")
    if not isinstance(splits, dict) or not splits:
        raise ValueError(f"{source}: 'split' must be a non-empty dict of split name -> frame_dir list")

    if num_classes is None:
        num_classes = data.get("num_classes")
        if num_classes is not None and (not _is_int(num_classes) or num_classes < 1):
            problems.add("num_classes", f"must be a positive integer, got {num_classes!r}")
            num_classes = None
    if num_classes is None:
        num_classes = _implied_num_classes(splits)

    seen = collections.Counter()
    kinds = collections.defaultdict(list)  # (kind, V) -> frame_dirs
    to_convert = []
    for i, ann in enumerate(annotations):
        if isinstance(ann, dict) and isinstance(ann.get("frame_dir"), str):
            seen[ann["frame_dir"]] += 1  # even if unusable: its split entries are not the problem
        checked = _check_sample(i, ann, problems, num_classes)
        if checked is not None:
            frame_dir, kind, num_joints, conversions = checked
            kinds[(kind, num_joints)].append(frame_dir)
            if conversions:
                to_convert.append((ann, conversions))
    for frame_dir, count in seen.items():
        if count > 1:
            problems.add(frame_dir, f"frame_dir appears {count} times in annotations")
    if len(kinds) > 1:
        # the most common (kind, V) is taken as the file's format; report the others
        major = max(kinds, key=lambda k: len(kinds[k]))
        for key, frame_dirs in kinds.items():
            if key != major:
                for frame_dir in frame_dirs:
                    problems.add(frame_dir, f"{key[0].upper()} with V={key[1]} joints, but most samples "
                                            f"are {major[0].upper()} with V={major[1]}")

    for name, members in splits.items():
        if not isinstance(name, str) or not name:
            problems.add("split", f"split names must be non-empty strings, got {name!r}")
            continue
        if not isinstance(members, (list, tuple)):
            problems.add(f"split {name!r}", f"must be a list of frame_dir, got {type(members).__name__}")
            continue
        unknown = [m for m in members if not isinstance(m, str) or not seen[m]]
        for member in unknown[:MAX_REPORTED]:
            problems.add(str(member), f"listed in split {name!r} but has no annotation")
        if len(unknown) > MAX_REPORTED:
            problems.add(f"split {name!r}", f"{len(unknown)} frame_dirs without annotation in total")
    if disjoint_splits or dataset is not None:
        _check_leakage(splits, problems)
    problems.raise_if_any()
    if dataset is not None:
        check_release(data, source, dataset)

    converted = {"packed": [], "int": []}
    for ann, conversions in to_convert:
        _convert(ann, conversions)
        for conversion in conversions:
            converted[conversion].append(ann["frame_dir"])
    return _conversion_notes(converted)


def _read(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    return safe_pickle.load(path, "an annotation pickle")


def load_annotations(path, num_classes=None, dataset=None, disjoint_splits=False):
    """Load and validate a PYSKL annotation pickle; return the dict (see module docstring).

    ``num_classes``, ``dataset`` and ``disjoint_splits``: see ``validate_annotations``. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file: for a global the
    format never holds (the pickle is not run, ``msg3d.safe_pickle``) and for every problem by
    ``frame_dir``.
    """
    data = _read(path)
    validate_annotations(data, source=str(path), num_classes=num_classes, dataset=dataset,
                         disjoint_splits=disjoint_splits)
    return data


def split_samples(data, split, source):
    """``(frame_dirs, labels (N,) int64)`` of split ``split`` of a validated annotation dict.

    The split's annotations in annotation order, as PYSKL's PoseDataset lists them (so its test
    results are in this order). ``source`` names the file in the ValueError for an unknown split.
    """
    if split not in data["split"]:
        raise ValueError(f"{source}: no split {split!r}; its splits are {', '.join(map(str, data['split']))}")
    members = set(data["split"][split])
    annotations = [a for a in data["annotations"] if a["frame_dir"] in members]
    return [a["frame_dir"] for a in annotations], np.array([a["label"] for a in annotations], dtype=np.int64)


def summarize(data, notes=()):
    """A few lines describing a validated annotation dict, then ``notes`` (``validate_annotations``')."""
    anns = data["annotations"]
    kp0 = anns[0]["keypoint"]
    kind = "2D (x, y + keypoint_score)" if kp0.shape[-1] == 2 else "3D (x, y, z)"
    frames = np.array([a["total_frames"] for a in anns])
    persons = collections.Counter(a["keypoint"].shape[0] for a in anns)
    labels = np.array([a["label"] for a in anns])
    dtypes = sorted({str(a["keypoint"].dtype) for a in anns})
    lines = [
        f"samples: {len(anns)}, keypoints {kind}, V={kp0.shape[2]}, dtype {', '.join(dtypes)}",
        f"frames: min {frames.min()}, median {int(np.median(frames))}, max {frames.max()}",
        "persons: " + ", ".join(f"M={m}: {n}" for m, n in sorted(persons.items())),
        f"labels: {len(np.unique(labels))} distinct, range {labels.min()}..{labels.max()}",
        "splits: " + ", ".join(f"{name} {len(members)}" for name, members in data["split"].items()),
        *(f"note: {note}" for note in notes),
    ]
    return "\n".join(lines)


def add_arguments(parser):
    from msg3d.data import pyskl_kpfiles as kpf  # the K400 route's defaults and choices

    parser.add_argument("annotations", type=Path,
                        help="PYSKL annotation pickle (3D or HRNet 2D), or with --kpfiles PYSKL's K400 table of "
                             "contents (k400_hrnet.pkl)")
    parser.add_argument("--out", type=Path, help="write a validated copy here (atomically)")
    parser.add_argument("--num-classes", type=int, help="labels must be below this (default: inferred)")
    parser.add_argument("--dataset", choices=sorted(NUM_ACTIONS),
                        help="the NTU release the file must be: labels below its class count, its split names")
    parser.add_argument("--kpfiles", type=Path, metavar="DIR",
                        help="decode the table of contents' skeletons from the kpfiles in DIR (each raw_file found "
                             "by its base name), as PYSKL's DecompressPose does, into a 2D annotation pickle")
    parser.add_argument("--box-thr", type=float, choices=kpf.BOX_THRESHOLDS,
                        help=f"with --kpfiles: keep skeletons with box_score >= this in training splits (default "
                             f"{kpf.BOX_THR}, PYSKL's K400 configs); applies only with --valid-ratio > 0, as in PYSKL")
    parser.add_argument("--valid-ratio", type=float,
                        help=f"with --kpfiles: drop training videos with valid[box-thr] / total_frames below this "
                             f"(default {kpf.VALID_RATIO}, PYSKL's K400 configs: no filtering)")
    parser.add_argument("--max-person", type=int,
                        help=f"with --kpfiles: at most this many persons, the most confident per frame when a video "
                             f"has more (default {kpf.MAX_PERSON}, PYSKL's DecompressPose)")


def run(args):
    import sys

    from msg3d.data import pyskl_kpfiles as kpf

    kpfile_options = {"--box-thr": args.box_thr, "--valid-ratio": args.valid_ratio, "--max-person": args.max_person}
    if args.kpfiles is None:
        given = [option for option, value in kpfile_options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --kpfiles (a K400 table of contents)")
        data = _read(args.annotations)
        if kpf.is_table_of_contents(data):
            raise ValueError(f"{args.annotations}: a PYSKL K400 table of contents (raw_file, frame_inds; the "
                             "keypoints are in kpfiles): pass --kpfiles DIR")
        notes = []
    else:
        if args.dataset is not None:
            raise ValueError(f"--dataset {args.dataset} names an NTU release; a K400 table of contents is not one")
        data, summary = kpf.import_kpfiles(
            args.annotations, args.kpfiles,
            box_thr=kpf.BOX_THR if args.box_thr is None else args.box_thr,
            valid_ratio=kpf.VALID_RATIO if args.valid_ratio is None else args.valid_ratio,
            max_person=kpf.MAX_PERSON if args.max_person is None else args.max_person,
            log=sys.stderr)
        notes = summary["notes"]
    # the gate for files from elsewhere: train/val leakage is refused with or without --dataset
    notes = notes + validate_annotations(data, source=str(args.annotations), num_classes=args.num_classes,
                                         dataset=args.dataset, disjoint_splits=True)
    print(f"{args.annotations}: OK")
    print(summarize(data, notes))
    if args.out is not None:
        write_pickle_atomic(args.out, data)
        print(f"wrote {args.out}")
    return 0
