"""`msg3d make-kinetics-demo`: a small, deterministic Kinetics-skeleton release (ST-GCN layout).

Writes ``OUT_ROOT/kinetics_{train,val}/<video id>.json`` and ``kinetics_{train,val}_label.json`` in
the format of the ST-GCN release (REFERENCE §14), so that ``convert-kinetics`` and everything after
it run on it. Each class is one periodic motion of an OpenPose-18 body seen from the front (waving
one arm, raising both, squatting, kicking to one side, clapping, jumping, bowing), different enough
for a small MS-G3D to tell apart in a few epochs. What real OpenPose output brings is imitated:

* coordinates divided by the frame size (340 x 256) and written with 3 decimals; each clip has its
  own person position, size, speed, phase and slow drift, plus detector jitter;
* per-joint detection scores; undetected joints (at random, or outside the frame) are (0, 0) with
  score 0; some frames lose the person entirely (an empty ``skeleton`` list);
* ``frame_index`` starts at 1; clips last 90-299 frames (all below MS-G3D's 300);
* a second, idle person in about a third of the clips (less confident than the actor), and in a few
  clips a crowd: 6 or more people in some frames, listed in random order;
* one clip per part whose label entry says ``has_skeleton: false`` (every frame empty), which the
  conversion leaves out.

Video ids are 11 characters of YouTube's alphabet (so some start with ``-``). Every random draw
comes from ``numpy.random.default_rng([seed, part, class, clip])``: the same arguments give
byte-identical files.
"""

import json
import sys
from pathlib import Path

import numpy as np

from msg3d.data.kinetics_raw import NUM_FRAMES, NUM_JOINTS, PARTS
from msg3d.fileio import atomic_path

WIDTH, HEIGHT = 340, 256  # the release's frame size (REFERENCE §14); x is divided by WIDTH, y by HEIGHT
FPS = 30
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
MIN_FRAMES, MAX_FRAMES = 90, NUM_FRAMES - 1  # frame_index 1 ... length stays below 300

MOTIONS = (
    "waving the right arm",
    "waving the left arm",
    "raising both arms",
    "squatting",
    "kicking to the right",
    "clapping",
    "jumping",
    "kicking to the left",
    "bowing",
)

# The body at rest, seen from the front, in body units (neck at the origin, y pointing down as in an
# image, the person's right on the image's left), OpenPose-18 order. Neck to ankle: 1.4 units.
REST = np.array([
    (0.0, -0.22), (0.0, 0.0), (-0.2, 0.0), (-0.24, 0.3), (-0.27, 0.56), (0.2, 0.0), (0.24, 0.3), (0.27, 0.56),
    (-0.12, 0.6), (-0.13, 1.0), (-0.14, 1.4), (0.12, 0.6), (0.13, 1.0), (0.14, 1.4),
    (-0.05, -0.27), (0.05, -0.27), (-0.1, -0.24), (0.1, -0.24),
])
UPPER_ARM, FOREARM, THIGH, SHIN = 0.3, 0.27, 0.4, 0.4
# (shoulder, elbow, wrist) and (hip, knee, ankle) per side; side sign -1 = right (image left)
ARMS = {-1: (2, 3, 4), 1: (5, 6, 7)}
LEGS = {-1: (8, 9, 10), 1: (11, 12, 13)}
HIPS = (8, 11)
UPPER_BODY = (0, 1, 2, 3, 4, 5, 6, 7, 14, 15, 16, 17)


def _limb(joints, chain, side, raise_angle, bend):
    """Place a two-segment limb: ``raise_angle`` (radians, 0 = hanging down, pi = straight up) turns
    it out to its own side, ``bend`` folds the lower segment further; both broadcast over frames."""
    root, middle, end = chain
    upper, lower = (UPPER_ARM, FOREARM) if chain in ARMS.values() else (THIGH, SHIN)
    for joint, start, length, angle in ((middle, root, upper, raise_angle), (end, middle, lower, raise_angle + bend)):
        joints[:, joint, 0] = joints[:, start, 0] + side * length * np.sin(angle)
        joints[:, joint, 1] = joints[:, start, 1] + length * np.cos(angle)


def motion(name, phase):
    """(T, 18, 2) body-unit joints of the motion ``name`` (one of ``MOTIONS``, or ``"standing"``)
    at the phases ``phase`` (T,) (radians)."""
    t = len(phase)
    joints = np.repeat(REST[None], t, axis=0)
    swing = 0.5 - 0.5 * np.cos(phase)  # 0 ... 1 ... 0 over a period
    rest_arm, rest_leg = 0.15, 0.05
    arms = {side: (np.full(t, rest_arm), np.full(t, 0.1)) for side in ARMS}
    legs = {side: (np.full(t, rest_leg), np.zeros(t)) for side in LEGS}
    if name.startswith("waving"):
        side = -1 if "right" in name else 1
        arms[side] = (np.full(t, 2.4), 0.7 * np.sin(phase))
    elif name == "raising both arms":
        arms = {side: (rest_arm + 2.7 * swing, 0.2 * swing) for side in ARMS}
    elif name.startswith("kicking"):
        side = -1 if "right" in name else 1
        legs[side] = (rest_leg + 1.1 * np.maximum(np.sin(phase), 0) ** 2, np.zeros(t))
    elif name == "clapping":
        # forearms swing in front of the chest, the hands meeting in the middle
        arms = {side: (np.full(t, 0.5), -1.9 - 0.9 * swing) for side in ARMS}
    elif name == "squatting":
        joints[:, list(UPPER_BODY) + list(HIPS), 1] += 0.35 * swing[:, None]  # all but the legs go down
        legs = {side: (0.5 * swing, -1.0 * swing) for side in LEGS}  # knees out, feet under the hips
    elif name == "bowing":
        # the trunk tips towards the camera: the upper body looks shorter and sinks
        upper = list(UPPER_BODY)
        joints[:, upper, 1] = joints[:, upper, 1] * (1 - 0.6 * swing)[:, None] + 0.45 * swing[:, None]
    for side, chain in ARMS.items():
        _limb(joints, chain, side, *arms[side])
    for side, chain in LEGS.items():
        _limb(joints, chain, side, *legs[side])
    if name == "jumping":
        joints[:, :, 1] -= 0.35 * np.abs(np.sin(phase / 2))[:, None]
    return joints


def _person(rng, joints, score_range, undetected):
    """Body-unit joints (T, 18, 2) -> image-normalised (pose (T, 18, 2), score (T, 18)) at a random
    place and size; joints outside the frame or dropped at random are (0, 0) with score 0."""
    t = len(joints)
    height = rng.uniform(0.35, 0.6)  # neck to ankle, as a fraction of the frame height
    unit = height / 1.4 * np.array([HEIGHT / WIDTH, 1.0])  # one body unit in (x, y) normalised units
    start = np.array([rng.uniform(0.25, 0.75), rng.uniform(0.2, 0.4)])
    drift = rng.normal(0, 0.0004, 2) * np.arange(t)[:, None]
    pose = start + drift[:, None, :] + joints * unit + rng.normal(0, 0.003, (t, NUM_JOINTS, 2))
    score = np.clip(rng.uniform(*score_range, NUM_JOINTS) + rng.normal(0, 0.05, (t, NUM_JOINTS)), 0.05, 1.0)
    lost = (rng.random((t, NUM_JOINTS)) < undetected) | ((pose < 0) | (pose > 1)).any(axis=2)
    pose[lost], score[lost] = 0.0, 0.0
    return np.round(pose, 3), np.round(score, 3)


def _skeleton(pose, score):
    return {"pose": pose.ravel().tolist(), "score": score.tolist()}


def make_clip(rng, label):
    """The JSON value of one clip of class ``label`` (see the module docstring)."""
    length = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    speed = 2 * np.pi * rng.uniform(0.5, 1.1) / FPS  # radians per frame: 0.5-1.1 periods a second
    phase = rng.uniform(0, 2 * np.pi) + speed * np.arange(length)
    people = [_person(rng, motion(MOTIONS[label], phase), (0.55, 0.95), 0.03)]
    present = [rng.random(length) >= 0.03]  # the actor vanishes from a few frames
    if rng.random() < 0.35:  # an idle bystander, less confident
        idle = motion("standing", np.zeros(length))
        idle[:, :, 1] += 0.02 * np.sin(np.arange(length) / 20 + rng.uniform(0, 6))[:, None]  # sways a little
        people.append(_person(rng, idle, (0.15, 0.45), 0.15))
        start = int(rng.integers(0, length // 2))
        present.append(np.arange(length) >= start)
    if rng.random() < 0.1:  # a crowd for a while: 6 or more people listed in those frames
        begin = int(rng.integers(0, length - 30))
        span = np.zeros(length, bool)
        span[begin : begin + int(rng.integers(10, 30))] = True
        for _ in range(int(rng.integers(5, 8))):
            people.append(_person(rng, motion("standing", np.zeros(length)), (0.05, 0.2), 0.4))
            present.append(span)
    frames = []
    for i in range(length):
        listed = [k for k in range(len(people)) if present[k][i]]
        if len(listed) > 2:
            rng.shuffle(listed)  # OpenPose lists people in no particular order
        frames.append({"frame_index": i + 1,
                       "skeleton": [_skeleton(people[k][0][i], people[k][1][i]) for k in listed]})
    return {"data": frames, "label": MOTIONS[label], "label_index": label}


def _video_id(rng, taken):
    while True:
        vid = "".join(ID_ALPHABET[k] for k in rng.integers(0, len(ID_ALPHABET), 11))
        if vid not in taken:
            taken.add(vid)
            return vid


def write_kinetics_release(root, num_classes=5, train_per_class=12, val_per_class=4, seed=0):
    """Write the demo release into ``root`` (replaced as a whole); return part -> sorted video ids
    of its clips with ``has_skeleton: true``.

    ``num_classes`` (1 ... ``len(MOTIONS)``) classes, labels 0 ... num_classes - 1 = ``MOTIONS``
    in order; ``train_per_class`` / ``val_per_class`` clips each (>= 1), plus one empty clip per
    part marked ``has_skeleton: false``. Raises ValueError for arguments out of range.
    """
    if not 1 <= num_classes <= len(MOTIONS):
        raise ValueError(f"num_classes must be 1 ... {len(MOTIONS)} (one motion each), got {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"need >= 1 train and val clip per class, got {train_per_class} and {val_per_class}")
    counts = {"train": train_per_class, "val": val_per_class}
    taken, kept = set(), {}
    with atomic_path(root, is_dir=True) as tmp:
        for p, part in enumerate(PARTS):
            folder = tmp / f"kinetics_{part}"
            folder.mkdir()
            labels = {}
            for label in range(num_classes):
                for k in range(counts[part]):
                    rng = np.random.default_rng([seed, p, label, k])
                    vid = _video_id(rng, taken)
                    labels[vid] = {"has_skeleton": True, "label": MOTIONS[label], "label_index": label}
                    (folder / f"{vid}.json").write_text(json.dumps(make_clip(rng, label)), encoding="utf-8")
            kept[part] = sorted(labels)
            rng = np.random.default_rng([seed, p, len(MOTIONS)])  # the empty clip: a class of its own
            vid = _video_id(rng, taken)
            label = int(rng.integers(0, num_classes))
            labels[vid] = {"has_skeleton": False, "label": MOTIONS[label], "label_index": label}
            empty = [{"frame_index": i, "skeleton": []} for i in range(1, MIN_FRAMES + 1)]
            (folder / f"{vid}.json").write_text(
                json.dumps({"data": empty, "label": MOTIONS[label], "label_index": label}), encoding="utf-8")
            (tmp / f"kinetics_{part}_label.json").write_text(json.dumps(labels), encoding="utf-8")
    return kept


def add_arguments(parser):
    parser.add_argument("out_root", metavar="OUT_ROOT", type=Path,
                        help="folder to write the release to (replaced as a whole)")
    parser.add_argument("--classes", type=int, default=5, help=f"number of classes, 1 ... {len(MOTIONS)} (default 5)")
    parser.add_argument("--train-per-class", type=int, default=12, help="training clips per class (default 12)")
    parser.add_argument("--val-per-class", type=int, default=4, help="val clips per class (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0): same seed, same bytes")


def run(args):
    kept = write_kinetics_release(args.out_root, args.classes, args.train_per_class, args.val_per_class, args.seed)
    print(f"wrote a Kinetics-skeleton demo release to {args.out_root}: {len(kept['train'])} train and "
          f"{len(kept['val'])} val clips of {args.classes} classes (+1 empty clip per part, has_skeleton false)",
          file=sys.stderr)
    return 0
