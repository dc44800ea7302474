"""PYSKL annotation pickles: load, validate, summarise (`msg3d import-pyskl ANN.pkl [--out OUT.pkl]`).

Accepts PYSKL's released ``ntu{60,120}_3danno.pkl`` (3D) and ``ntu{60,120}_hrnet.pkl`` (HRNet 2D)
and our own ``convert-ntu`` output (REFERENCE §4.1)::

    {'split': {split_name: [frame_dir, ...]},
     'annotations': [{'frame_dir': str, 'label': int, 'total_frames': T,
                      'keypoint': (M, T, V, C) float,            # 3D: C=3; 2D: C=2 pixels
                      'keypoint_score': (M, T, V) float,         # 2D only
                      'img_shape': (h, w), 'original_shape': (h, w)}, ...]}   # 2D, optional

Validation collects every problem it finds (keys, types, shapes, dtypes, label range, split
names and members) and reports them together by ``frame_dir``, capped to a readable number.
Torch-free.
"""

import collections
import pickle
from pathlib import Path

import numpy as np

from msg3d.fileio import write_pickle_atomic

MAX_REPORTED = 20

# Split names that identify the dataset, hence the number of classes labels must stay below.
_SPLIT_NUM_CLASSES = {"xview_train": 60, "xview_val": 60, "xset_train": 120, "xset_val": 120}


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


def _check_sample(i, ann, problems, num_classes):
    """Check one annotation dict; return its (frame_dir, kind, V) or None when unusable."""
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
    if kp.dtype.kind != "f":
        problems.add(where, f"keypoint dtype must be floating, got {kp.dtype}")
        return None
    num_person, num_frames, num_joints, channels = kp.shape
    # M = 0 (no person detected) is legal: PYSKL feeds such samples as all-zero input
    if num_joints < 1:
        problems.add(where, f"keypoint has no joints, shape {kp.shape}")
        return None
    if total is not None and num_frames != total:
        problems.add(where, f"keypoint has {num_frames} frames but total_frames is {total}")
    if not np.isfinite(kp).all():
        problems.add(where, "keypoint contains NaN or inf")

    score = ann.get("keypoint_score")
    if channels == 3:
        kind = "3d"
        if score is not None:
            problems.add(where, "keypoint_score given with 3-channel keypoint (2D keypoints have C=2)")
    elif channels == 2:
        kind = "2d"
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
    return frame_dir, kind, num_joints


def _implied_num_classes(splits):
    counts = {_SPLIT_NUM_CLASSES[name] for name in splits if name in _SPLIT_NUM_CLASSES}
    return min(counts) if counts else None


def validate_annotations(data, source="<annotations>", num_classes=None):
    """Validate a PYSKL annotation dict in place; raise ``ValueError`` listing every problem.

    ``num_classes`` bounds the labels; if None, the dict's optional ``'num_classes'`` entry or the
    split names (xview -> NTU60: 60, xset -> NTU120: 120) are used when present.
    Returns ``data`` unchanged.
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
    for i, ann in enumerate(annotations):
        if isinstance(ann, dict) and isinstance(ann.get("frame_dir"), str):
            seen[ann["frame_dir"]] += 1  # even if unusable: its split entries are not the problem
        checked = _check_sample(i, ann, problems, num_classes)
        if checked is not None:
            frame_dir, kind, num_joints = checked
            kinds[(kind, num_joints)].append(frame_dir)
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
    problems.raise_if_any()
    return data


def load_annotations(path, num_classes=None):
    """Load and validate a PYSKL annotation pickle; return the dict (see module docstring).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and every
    problem by ``frame_dir``. Only load pickles you trust (pickle can run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    return validate_annotations(data, source=str(path), num_classes=num_classes)


def summarize(data):
    """A few lines describing a validated annotation dict."""
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
    ]
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("annotations", type=Path, help="PYSKL annotation pickle (3D or HRNet 2D)")
    parser.add_argument("--out", type=Path, help="write a validated copy here (atomically)")
    parser.add_argument("--num-classes", type=int, help="labels must be below this (default: inferred)")


def run(args):
    data = load_annotations(args.annotations, num_classes=args.num_classes)
    print(f"{args.annotations}: OK")
    print(summarize(data))
    if args.out is not None:
        write_pickle_atomic(args.out, data)
        print(f"wrote {args.out}")
    return 0
