"""`msg3d make-demo`: a small, deterministic dataset of real-format NTU ``.skeleton`` files.

Synthetic performances of five actions on the 25-joint Kinect v2 skeleton, each recorded by the
three NTU cameras, so that every stage of the real pipeline runs on it: conversion (with its body
denoising and skip rules), the four modalities, training, testing, fusion.

* Actions (label = AXXX - 1): A001 wave the right hand, A002 raise both arms, A003 squat,
  A004 kick with the right leg, A005 two people walk up to each other and shake hands (2 bodies).
* Performers come from NTU60's cross-subject training list (P001, P002, P004, ...) and from its
  val performers (P003, P006, ...); cameras C001 (cross-view val) and C002/C003 (train) record
  every performance, so both the xsub and the xview split hold train and val samples of every
  action.
* Each performer has their own body size, speed and style; each performance its own length,
  position and facing; each camera its own viewpoint and sensor noise (jitter, slow drift, and
  hand/foot joints that jump for a few frames, as when Kinect only infers them). Body IDs are
  64-bit Kinect-style tracking IDs.
* Denoising: some recordings gain a short ghost track (<= 11 frames, dropped by the length filter)
  or a long flat "furniture" track (x-range > 0.8 y-range, dropped by the spread filter), and some
  start with frames without any body (left out by the converter).
* Skips: a recording named on the official missing-skeleton list, and one with no body at all.

Files are written with ``msg3d.data.ntu_raw.format_skeleton_file`` (full Kinect v2 lines; only
x y z carry information). Every random draw comes from
``numpy.random.default_rng([seed, ...])`` of the performer, performance or recording, so the same
arguments give byte-identical files.
"""

import sys
from pathlib import Path

import numpy as np

from msg3d.data.ntu_raw import format_skeleton_file
from msg3d.data.splits import XSUB_TRAIN_SUBJECTS
from msg3d.fileio import atomic_path

FPS = 30
ACTIONS = {
    1: "wave the right hand",
    2: "raise both arms",
    3: "squat",
    4: "kick with the right leg",
    5: "walk up to each other and shake hands",
}
# azimuth (degrees) of each camera around the scene: NTU's three Kinects stand at 0, -45 and +45
CAMERA_AZIMUTH = {1: 0.0, 2: -45.0, 3: 45.0}
TRAIN_PERFORMERS = sorted(XSUB_TRAIN_SUBJECTS)
VAL_PERFORMERS = [p for p in range(1, 107) if p not in XSUB_TRAIN_SUBJECTS]
# on the official missing-skeleton list: the converter must skip it whatever it holds
MISSING_NAME = "S001C003P005R002A004"
# a recording in which the sensor never found a body
EMPTY_NAME = "S001C002P007R001A002"
BODY_ID_BASE = 72057594037927936  # 2**56: Kinect v2 tracking ids are 64-bit numbers above it

LEFT, RIGHT = 1, -1  # side sign: the body frame's x axis points to the performer's left
# (shoulder, elbow, wrist, hand, hand tip, thumb) and (hip, knee, ankle, foot) of each side
ARM_JOINTS = {LEFT: (4, 5, 6, 7, 21, 22), RIGHT: (8, 9, 10, 11, 23, 24)}
LEG_JOINTS = {LEFT: (12, 13, 14, 15), RIGHT: (16, 17, 18, 19)}
# joints whose position the sensor often only infers
EXTREMITIES = (7, 11, 15, 19, 21, 22, 23, 24)


# --------------------------------------------------------------------------- body model


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _limb(elevation, azimuth, side):
    """Unit direction of a limb segment in the body frame (x: performer's left, y: up, z: forward).

    ``elevation`` 0 hangs down, pi/2 is horizontal, pi points up (negative: backwards);
    ``azimuth`` 0 is sideways (towards ``side``), pi/2 is forward. Arrays broadcast over frames.
    """
    elevation, azimuth = np.broadcast_arrays(elevation, azimuth)
    s = np.sin(elevation)
    return np.stack([side * s * np.cos(azimuth), -np.cos(elevation), s * np.sin(azimuth)], axis=-1)


def _blend(rest, active, weight):
    """Directions moving from ``rest`` to ``active`` as ``weight`` (T,) goes from 0 to 1."""
    return _unit((1 - weight)[:, None] * rest + weight[:, None] * active + 1e-9)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _envelope(t, duration, rise=0.6, fall=0.5):
    """0 -> 1 over the first ``rise`` seconds, back to 0 over the last ``fall`` seconds."""
    return _smoothstep(t / rise) * _smoothstep((duration - t) / fall)


class Performer:
    """Body proportions and movement style of one performer."""

    def __init__(self, rng):
        self.scale = rng.uniform(0.88, 1.08)  # 1.0: about 1.72 m tall
        self.speed = rng.uniform(0.85, 1.15)
        self.amplitude = rng.uniform(0.85, 1.1)
        self.shoulder = 0.18 * rng.uniform(0.92, 1.08)
        self.hip = 0.09 * rng.uniform(0.9, 1.1)


class Pose:
    """Per-frame angles of one body: trunk lean, arm and leg segment directions, walked distance."""

    def __init__(self, t):
        n = len(t)
        self.pitch = np.zeros(n)
        self.forward = np.zeros(n)  # distance walked along the body's forward axis (m)

        def still(elevation, azimuth, side):
            return np.tile(_limb(elevation, azimuth, side), (n, 1))

        # standing: arms hanging a little away from the body, forearms slightly forward
        self.arms = {side: (still(0.12, 0.0, side), still(0.3, np.pi / 2, side)) for side in (LEFT, RIGHT)}
        self.legs = {side: (still(0.03, np.pi / 2, side), still(0.0, np.pi / 2, side)) for side in (LEFT, RIGHT)}


def skeleton(performer, pose):
    """Joint positions ``(T, 25, 3)`` in the body frame, feet on the floor (y = 0)."""
    s = performer.scale
    n = len(pose.pitch)
    up = np.stack([np.zeros(n), np.cos(pose.pitch), np.sin(pose.pitch)], axis=-1)
    left = np.array([1.0, 0.0, 0.0])
    j = np.zeros((n, 25, 3))
    j[:, 0, 2] = pose.forward
    j[:, 1] = j[:, 0] + 0.28 * s * up
    j[:, 20] = j[:, 0] + 0.50 * s * up
    j[:, 2] = j[:, 20] + 0.07 * s * up
    j[:, 3] = j[:, 2] + 0.15 * s * up
    for side, (shoulder, elbow, wrist, hand, tip, thumb) in ARM_JOINTS.items():
        upper, lower = pose.arms[side]
        j[:, shoulder] = j[:, 20] + side * performer.shoulder * s * left - 0.03 * s * up
        j[:, elbow] = j[:, shoulder] + 0.29 * s * upper
        j[:, wrist] = j[:, elbow] + 0.25 * s * lower
        j[:, hand] = j[:, wrist] + 0.07 * s * lower
        j[:, tip] = j[:, hand] + 0.08 * s * lower
        j[:, thumb] = j[:, hand] + 0.03 * s * lower + 0.04 * s * _unit(np.cross(lower, side * left) + 1e-9)
    for side, (hip, knee, ankle, foot) in LEG_JOINTS.items():
        thigh, shin = pose.legs[side]
        j[:, hip] = j[:, 0] + side * performer.hip * s * left - 0.05 * s * up
        j[:, knee] = j[:, hip] + 0.42 * s * thigh
        j[:, ankle] = j[:, knee] + 0.41 * s * shin
        j[:, foot] = j[:, ankle] + np.array([0.0, -0.05, 0.12]) * s
    # stand on the lower foot
    j[:, :, 1] += 0.08 * s - np.minimum(j[:, 14, 1], j[:, 18, 1])[:, None]
    return j


# --------------------------------------------------------------------------- actions


def _walk(pose, t, until, speed, rng):
    """Walk forward until time ``until`` (s): legs and arms swing, the body moves ahead."""
    walking = _smoothstep((until - t) / 0.3)
    phase = 2 * np.pi * 0.9 * speed * t + rng.uniform(0, 2 * np.pi)
    for side, sign in ((LEFT, 1), (RIGHT, -1)):
        swing = sign * np.sin(phase) * walking
        knee = np.maximum(0.0, sign * np.cos(phase)) * walking
        pose.legs[side] = (_limb(0.4 * swing, np.pi / 2, side), _limb(0.4 * swing - 0.7 * knee, np.pi / 2, side))
        pose.arms[side] = (_limb(0.12 - 0.35 * swing, np.pi / 2, side), _limb(0.3 - 0.3 * swing, np.pi / 2, side))
    pose.forward = np.cumsum(walking) * 0.55 * speed / FPS


def act(action, performer, t, rng):
    """The poses of one performance of ``action``: a list of ``Pose`` (one per person)."""
    duration = t[-1] + 1 / FPS
    a, v = performer.amplitude, performer.speed
    pose = Pose(t)
    if action == 1:  # wave the right hand: forearm up, swinging sideways
        env = _envelope(t, duration)
        swing = 0.5 * a * np.sin(2 * np.pi * 1.7 * v * t + rng.uniform(0, 2 * np.pi))
        wave = _unit(np.stack([RIGHT * np.sin(swing), np.cos(swing), np.full_like(t, 0.25)], axis=-1))
        upper_rest, lower_rest = pose.arms[RIGHT]
        pose.arms[RIGHT] = (_blend(upper_rest, _limb(1.75 * a, 0.35, RIGHT), env), _blend(lower_rest, wave, env))
    elif action == 2:  # raise both arms sideways above the head, once or twice
        cycles = max(1, round(duration * v / 1.8))
        raise_ = a * 2.7 * 0.5 * (1 - np.cos(2 * np.pi * cycles * t / duration))
        for side in (LEFT, RIGHT):
            forearm = _limb(0.3 + 1.05 * raise_, 0.25 + 0.3 * (raise_ < 1), side)
            pose.arms[side] = (_limb(0.12 + raise_, 0.25, side), forearm)
    elif action == 3:  # squat down and up, once or twice; arms forward for balance
        cycles = max(1, round(duration * v / 2.2))
        depth = 0.5 * (1 - np.cos(2 * np.pi * cycles * t / duration))
        hip = 1.6 * a * depth
        pose.pitch = 0.45 * hip
        for side in (LEFT, RIGHT):
            pose.legs[side] = (_limb(hip, np.pi / 2, side), _limb(-0.9 * hip, np.pi / 2, side))
            pose.arms[side] = (_limb(0.12 + 1.3 * depth, np.pi / 2, side), _limb(0.3 + 1.2 * depth, np.pi / 2, side))
    elif action == 4:  # kick forward with the right leg, once or twice
        kicks = max(1, round(duration * v / 1.6))
        centres = (np.arange(kicks) + 0.5) * duration / kicks + rng.normal(0, 0.08, kicks)
        p = np.max(np.exp(-(((t[:, None] - centres[None, :]) / (0.28 / v)) ** 2)), axis=1)
        hip = 1.3 * a * p
        pose.legs[RIGHT] = (_limb(hip, np.pi / 2, RIGHT), _limb(hip - 1.1 * np.sin(np.pi * p), np.pi / 2, RIGHT))
        pose.pitch = -0.15 * p
        for side in (LEFT, RIGHT):
            pose.arms[side] = (_limb(0.12 + 0.4 * p, 0.0, side), pose.arms[side][1])
    elif action == 5:  # walk up to each other, shake right hands
        meet = duration * rng.uniform(0.45, 0.6)
        poses = []
        for _ in range(2):
            pose = Pose(t)
            _walk(pose, t, meet, v, rng)
            shake = _smoothstep((t - meet) / 0.4) * _smoothstep((duration - t) / 0.3)
            bob = 0.12 * np.sin(2 * np.pi * 3.0 * t) * shake
            upper_rest, lower_rest = pose.arms[RIGHT]
            pose.arms[RIGHT] = (
                _blend(upper_rest, _limb(0.9 + bob, np.pi / 2 + 0.25, RIGHT), shake),  # forward, inwards
                _blend(lower_rest, _limb(1.25 + bob, np.pi / 2 + 0.3, RIGHT), shake),
            )
            poses.append(pose)
        return poses
    else:
        raise ValueError(f"unknown demo action A{action:03d}; known: {', '.join(f'A{k:03d}' for k in ACTIONS)}")
    # a little idle sway of the whole body
    pose.pitch = pose.pitch + 0.03 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 2 * np.pi))
    return [pose]


# --------------------------------------------------------------------------- scene and sensor


def _yaw(angle):
    """Body-frame -> world rotation for a body whose forward axis has azimuth ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    # columns: left, up, forward
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _camera(azimuth_deg, distance, height):
    """(position, 3x3 rows = camera x (its left), y (up), z (viewing direction)) of a camera."""
    b = np.radians(azimuth_deg)
    position = np.array([distance * np.sin(b), height, -distance * np.cos(b)])
    forward = _unit(np.array([0.0, 1.0, 0.0]) - position)
    left = _unit(np.cross([0.0, 1.0, 0.0], forward))
    return position, np.stack([left, np.cross(forward, left), forward])


def _sensor(world, camera, rng):
    """Camera-space joints ``(T, 25, 3)`` of one body, with sensor noise.

    White jitter (more in depth), a slow random-walk drift of the whole body, and bursts of a few
    frames in which a hand or foot joint is only inferred and sits a few centimetres off.
    """
    position, rows = camera
    cam = (world - position) @ rows.T
    n = len(cam)
    cam = cam + np.cumsum(rng.normal(0, 0.0015, (n, 1, 3)), axis=0)
    cam = cam + rng.normal(0, 1, cam.shape) * np.array([0.004, 0.004, 0.007])
    for joint in EXTREMITIES:
        frame = 0
        while frame < n:
            if rng.random() < 0.02:
                length = int(rng.integers(2, 8))
                cam[frame : frame + length, joint] += rng.normal(0, 0.03, 3)
                frame += length
            frame += 1
    return cam


def _ghost(n, rng):
    """A short spurious track (a few frames of scattered joints): the length filter drops it."""
    length = int(rng.integers(4, 11))
    start = int(rng.integers(0, n - length))
    centre = np.array([rng.uniform(-1.5, 1.5), rng.uniform(0.2, 0.8), rng.uniform(3.5, 4.5)])
    joints = centre + rng.normal(0, 0.25, (length, 25, 3))
    return start, joints


def _furniture(n, rng):
    """A long flat static track (wide in x, thin in y): the spread filter drops it."""
    length = int(rng.integers(max(15, n // 2), n))
    start = int(rng.integers(0, n - length + 1))
    base = np.stack([np.linspace(-0.6, 0.6, 25), rng.uniform(-0.45, -0.35, 25), rng.uniform(2.2, 2.5, 25)], axis=-1)
    joints = base + rng.normal(0, 0.003, (length, 25, 3))
    return start, joints


def recording(seed, action, performer_id, replication, camera_id, frames, setup):
    """What one camera records of one performance: per frame a list of ``(body_id, joints (25, 3))``."""
    performer = Performer(np.random.default_rng([seed, performer_id]))
    rng = np.random.default_rng([seed, action, performer_id, replication])  # shared by the cameras
    t = np.arange(frames) / FPS
    poses = act(action, performer, t, rng)
    # towards camera 1, turned a little to one side (R001) or the other (R002); two people face
    # each other across camera 1's view
    facing = np.radians((-20 if replication % 2 else 20) + rng.normal(0, 10) + (90 if len(poses) > 1 else 180))
    origin = np.array([rng.uniform(-0.3, 0.3), 0.0, rng.uniform(-0.3, 0.3)])
    # a second person starts ahead of the first, facing them, so that they meet about 0.75 m apart
    # around the middle of the scene
    gap = 0.75 + sum(pose.forward[-1] for pose in poses)
    partner = Performer(np.random.default_rng([seed, performer_id, action, replication, 2]))
    worlds = []
    for k, pose in enumerate(poses):
        place = origin + _yaw(facing) @ np.array([0.0, 0.0, gap * (k - (len(poses) - 1) / 2)])
        worlds.append(place + skeleton(partner if k else performer, pose) @ _yaw(facing + np.pi * k).T)

    sensor = np.random.default_rng([seed, action, performer_id, replication, camera_id])
    camera = _camera(CAMERA_AZIMUTH[camera_id] + sensor.normal(0, 3), 3.0 + 0.25 * setup, 0.7 + 0.1 * setup)
    tracks = [(0, _sensor(world, camera, sensor)) for world in worlds]  # (first frame, joints)
    # spurious tracks in a fixed share of the recordings, so that every demo, however small, has
    # them: each performer's 15 recordings (5 actions x 3 cameras) hit each case
    noise = (action + camera_id + performer_id) % 4
    if noise == 0:
        tracks.append(_ghost(frames, sensor))
    elif noise == 1:
        tracks.append(_furniture(frames, sensor))
    ids = BODY_ID_BASE + sensor.choice(np.arange(1000, 100000), size=len(tracks), replace=False)
    # the sensor finds nobody during the first frames of some recordings
    blank = int(sensor.integers(1, 5)) if (action + camera_id) % 5 == 0 else 0

    per_frame = [[] for _ in range(frames)]
    for body_id, (start, joints) in zip(ids.tolist(), tracks):
        for i, frame_joints in enumerate(joints):
            if start + i >= blank:
                per_frame[start + i].append((body_id, frame_joints))
    return per_frame


# --------------------------------------------------------------------------- dataset


def performances(train_subjects, val_subjects, replications):
    """``(action, performer, replication, setup)`` of every performance, in name order."""
    performers = TRAIN_PERFORMERS[:train_subjects] + VAL_PERFORMERS[:val_subjects]
    out = []
    for rank, performer in enumerate(sorted(performers)):
        setup = 1 + rank % 3
        for replication in range(1, replications + 1):
            for action in ACTIONS:
                out.append((action, performer, replication, setup))
    return out


def sample_name(setup, camera, performer, replication, action):
    return f"S{setup:03d}C{camera:03d}P{performer:03d}R{replication:03d}A{action:03d}"


def make_demo(out_dir, seed=0, train_subjects=2, val_subjects=1, replications=1, min_frames=40, max_frames=90):
    """Write the demo ``.skeleton`` files into ``out_dir`` (replaced as a whole); return their names."""
    if not 1 <= train_subjects <= len(TRAIN_PERFORMERS) or not 1 <= val_subjects <= 20:
        raise ValueError(f"need 1..{len(TRAIN_PERFORMERS)} training and 1..20 val performers")
    if not 1 <= replications <= 2:
        raise ValueError(f"replications must be 1 or 2, got {replications}")
    if not 16 <= min_frames <= max_frames:
        raise ValueError(f"need 16 <= min_frames <= max_frames, got {min_frames} and {max_frames}")
    files = {}
    for action, performer, replication, setup in performances(train_subjects, val_subjects, replications):
        rng = np.random.default_rng([seed, action, performer, replication, 0])  # camera 0: the length
        length = int(rng.integers(min_frames, max_frames + 1))
        for camera in CAMERA_AZIMUTH:
            frames = recording(seed, action, performer, replication, camera, length, setup)
            files[sample_name(setup, camera, performer, replication, action)] = frames
    files[MISSING_NAME] = recording(seed, 4, 5, 2, 3, min_frames, 1)
    files[EMPTY_NAME] = [[] for _ in range(min_frames)]
    with atomic_path(out_dir, is_dir=True) as tmp:
        for name in sorted(files):
            (tmp / f"{name}.skeleton").write_text(format_skeleton_file(files[name]), encoding="ascii")
    return sorted(files)


def add_arguments(parser):
    parser.add_argument("out_dir", type=Path, help="folder to write the .skeleton files to (replaced as a whole)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0): same seed, same bytes")
    parser.add_argument("--train-subjects", type=int, default=2,
                        help="performers from the cross-subject training list (default 2: P001, P002)")
    parser.add_argument("--val-subjects", type=int, default=1,
                        help="performers from the cross-subject val subjects (default 1: P003)")
    parser.add_argument("--replications", type=int, default=1, help="repetitions per performer and action (1 or 2)")
    parser.add_argument("--min-frames", type=int, default=40, help="shortest recording (frames at 30 fps)")
    parser.add_argument("--max-frames", type=int, default=90, help="longest recording")


def run(args):
    names = make_demo(args.out_dir, args.seed, args.train_subjects, args.val_subjects, args.replications,
                      args.min_frames, args.max_frames)
    print(f"wrote {len(names)} .skeleton files to {args.out_dir}", file=sys.stderr)
    return 0
