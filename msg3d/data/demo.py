"""`msg3d make-demo`: a small, deterministic dataset of real-format NTU ``.skeleton`` files.

Synthetic performances of five actions on the 25-joint Kinect v2 skeleton, each recorded by the
three NTU cameras, so that every stage of the real pipeline runs on it: conversion (with its body
denoising and skip rules), the four modalities, training, testing, fusion.

* Actions (label = AXXX - 1): A001 wave the right hand, A002 raise both arms, A003 squat,
  A004 kick with the right leg, A005 two people walk up to each other and shake hands (2 bodies).
* Performers come from NTU60's cross-subject training list (P001, P002, P004, ...) and from its val
  performers (P003, P006, ...); cameras C001 (cross-view val) and C002/C003 (train) see each
  performance, so both the xsub and the xview split hold train and val samples of every action.
* Each performer has their own body size, speed and style; each performance its own length,
  position and facing; each camera its own viewpoint and sensor noise (jitter, drift, "inferred"
  extremity joints that jump).
* Denoising: some recordings gain a short ghost track (<= 11 frames, dropped by the length filter)
  or a long flat "furniture" track (x-range > 0.8 y-range, dropped by the spread filter), and some
  start with frames without any body (skipped by the converter).
* Skips: a recording named on the official missing-skeleton list, and one with no body at all.

Files are written with ``msg3d.data.ntu_raw.format_skeleton_file``; the same arguments give
byte-identical files (every random draw comes from ``default_rng([seed, ...])`` of the recording).
"""

import math
import sys
from pathlib import Path

import numpy as np

from msg3d.data.ntu_raw import format_skeleton_file
from msg3d.data.splits import XSUB_TRAIN_SUBJECTS, official_missing
from msg3d.io import atomic_path

FPS = 30
ACTIONS = {
    1: "wave the right hand",
    2: "raise both arms",
    3: "squat",
    4: "kick with the right leg",
    5: "walk up to each other and shake hands",
}
CAMERAS = (1, 2, 3)
# azimuth of each camera around the scene (degrees): NTU's three Kinects stand at -45, 0, +45
CAMERA_AZIMUTH = {1: 0.0, 2: -45.0, 3: 45.0}
TRAIN_PERFORMERS = sorted(XSUB_TRAIN_SUBJECTS)
VAL_PERFORMERS = [p for p in range(1, 107) if p not in XSUB_TRAIN_SUBJECTS]
# a name on the official missing-skeleton list (the converter must skip it whatever it holds)
MISSING_NAME = "S001C003P005R002A004"
# a recording in which the sensor never found a body
EMPTY_NAME = "S001C002P007R001A002"
BODY_ID_BASE = 72057594037927936  # 2**56: Kinect v2 tracking ids are 64-bit numbers above it

# Joints whose tracking the sensor often only infers (hands, feet, tips, thumbs).
EXTREMITIES = (7, 11, 15, 19, 21, 22, 23, 24)
# Joints without an orientation in real files (end joints): written as 0 0 0 0.
NO_ORIENTATION = (3, 15, 19, 21, 22, 23, 24)
# parent of each joint, for the orientation quaternions (joint 0 has none: spine direction)
PARENT = (1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 7, 11, 11)


# --------------------------------------------------------------------------- body model


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _limb(elevation, azimuth, side):
    """Direction of a limb segment (body frame: x = performer's left, y = up, z = forward).

    ``elevation`` 0 hangs down, pi/2 is horizontal, pi points up; ``azimuth`` 0 is sideways
    (to ``side``: +1 left, -1 right), pi/2 is forward. Arrays broadcast over frames.
    """
    s = np.sin(elevation)
    return np.stack([side * s * np.cos(azimuth), -np.cos(elevation), s * np.sin(azimuth)], axis=-1)


class Performer:
    """Body proportions and style of one performer (one rng draw per performer)."""

    def __init__(self, rng):
        self.scale = rng.uniform(0.88, 1.08)  # 1.0 ~ 1.72 m tall
        self.speed = rng.uniform(0.85, 1.15)
        self.amplitude = rng.uniform(0.85, 1.1)
        self.shoulder = 0.18 * rng.uniform(0.92, 1.08)
        self.hip = 0.09 * rng.uniform(0.9, 1.1)


def skeleton(performer, root, pitch, arms, legs):
    """Joint positions ``(T, 25, 3)`` in the body frame from per-frame angles.

    ``root`` (T, 3): spine-base position; ``pitch`` (T,): forward lean of the trunk; ``arms`` and
    ``legs``: ``{side: (upper (T, 3), lower (T, 3))}`` segment directions, side +1 left, -1 right.
    """
    s = performer.scale
    t = len(root)
    up = np.stack([np.zeros(t), np.cos(pitch), np.sin(pitch)], axis=-1)
    left = np.array([1.0, 0.0, 0.0])
    j = np.zeros((t, 25, 3))
    j[:, 0] = root
    j[:, 1] = root + 0.28 * s * up
    j[:, 20] = root + 0.50 * s * up
    j[:, 2] = j[:, 20] + 0.07 * s * up
    j[:, 3] = j[:, 2] + 0.15 * s * up
    for side, (shoulder, elbow, wrist, hand, tip, thumb) in ((1, (4, 5, 6, 7, 21, 22)), (-1, (8, 9, 10, 11, 23, 24))):
        upper, lower = arms[side]
        j[:, shoulder] = j[:, 20] + side * performer.shoulder * s * left - 0.03 * s * up
        j[:, elbow] = j[:, shoulder] + 0.29 * s * upper
        j[:, wrist] = j[:, elbow] + 0.25 * s * lower
        j[:, hand] = j[:, wrist] + 0.07 * s * lower
        j[:, tip] = j[:, hand] + 0.08 * s * lower
        # the thumb points forward-inward from the hand
        j[:, thumb] = j[:, hand] + 0.03 * s * lower + 0.04 * s * _unit(np.cross(lower, side * left) + 1e-9)
    for side, (hip, knee, ankle, foot) in ((1, (12, 13, 14, 15)), (-1, (16, 17, 18, 19))):
        thigh, shin = legs[side]
        j[:, hip] = root + side * performer.hip * s * left - 0.05 * s * up
        j[:, knee] = j[:, hip] + 0.42 * s * thigh
        j[:, ankle] = j[:, knee] + 0.41 * s * shin
        j[:, foot] = j[:, ankle] + np.array([0.0, -0.05, 0.12]) * s
    return j


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _envelope(t, duration, rise=0.5, fall=0.5):
    """0 -> 1 over the first ``rise`` seconds, back to 0 over the last ``fall`` seconds."""
    return _smoothstep(t / rise) * _smoothstep((duration - t) / fall)


def _rest_arm(t, side, swing=0.0):
    """Arms hanging, slightly bent, swinging forward/back by ``swing`` (radians, per frame)."""
    upper = _limb(0.12 + 0.0 * t + np.abs(swing) * 0.2, np.where(swing >= 0, np.pi / 2, -np.pi / 2) * 0 + np.pi / 2 * np.sign(swing), side)
    lower = _limb(0.3 + np.abs(swing) * 0.5, np.full_like(t, np.pi / 2), side)
    return upper, lower
