"""Skeleton normalisation and modality derivation, numerically as PYSKL's pipeline (REFERENCE §4.3).

All operators work on one sample's full sequence ``keypoint`` of shape ``(M, T, V, C)``
(persons, frames, joints, channels), before any frame sampling. The arithmetic dtypes follow
PYSKL step by step (float16 annotations stay float16 through the centering, the rotation
promotes to float64, bones are float32, motion keeps its input dtype), because that is what
makes our numbers agree with PYSKL's to ~1e-6 rather than ~1e-3. Torch-free.

The bone and motion operators live in their own modules (``bone.py``, ``motion.py``) so that a
derive job's code digest holds only the operators its modality runs (``msg3d.provenance``).
"""

import numpy as np

from msg3d.data.bone import joint_to_bone
from msg3d.data.features import PYSKL
from msg3d.data.motion import to_motion

MODALITIES = ("j", "b", "jm", "bm")

_Z_TARGET = np.array([0.0, 0.0, 1.0])
_X_TARGET = np.array([1.0, 0.0, 0.0])


def _rotation_onto(vector, target):
    """3x3 float64 matrix R (applied as p -> R p) turning ``vector`` towards ``target``.

    Axis ``cross(vector, target)``, angle ``arccos(<unit vector, unit target>)``, Euler-Rodrigues
    with quaternion vector ``-axis * sin(angle / 2)``; identity when the vector, the axis or the
    angle is ~0. ``vector`` keeps its dtype up to the angle (float16 data normalises in float16,
    as PYSKL does).
    """
    if np.abs(vector).sum() < 1e-6:
        return np.eye(3)
    unit = vector / np.linalg.norm(vector)
    angle = np.arccos(np.clip(np.dot(unit, target), -1.0, 1.0))
    axis = np.cross(vector, target)
    if np.abs(axis).sum() < 1e-6 or np.abs(angle) < 1e-6:
        return np.eye(3)
    axis = axis / np.sqrt(np.dot(axis, axis))
    a = np.cos(angle / 2.0)
    b, c, d = -axis * np.sin(angle / 2.0)
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c + a * d), 2 * (b * d - a * c)],
        [2 * (b * c - a * d), a * a + c * c - b * b - d * d, 2 * (c * d + a * b)],
        [2 * (b * d + a * c), 2 * (c * d - a * b), a * a + d * d - b * b - c * c],
    ])


class PreNormalize3D:
    """PYSKL ``PreNormalize3D``: drop empty frames, centre on the main body, align spine and shoulders.

    ``__call__(keypoint)`` takes ``(M, T, V, 3)`` with M in {1, 2} and returns
    ``(keypoint, body_center)``: keypoint ``(M, T', V, 3)`` float64 (T' = frames where the main
    body is present; the body with more such frames becomes body 0) and the subtracted centre
    (input dtype). An all-zero input is returned unchanged with ``body_center=None``.
    """

    def __init__(self, zaxis=(0, 1), xaxis=(8, 4)):
        self.zaxis = tuple(zaxis)
        self.xaxis = tuple(xaxis)

    def __call__(self, keypoint):
        keypoint = np.asarray(keypoint)
        if keypoint.ndim != 4 or keypoint.shape[-1] != 3:
            raise ValueError(f"PreNormalize3D needs keypoint (M, T, V, 3), got shape {keypoint.shape}")
        # PYSKL's test is the sum, not "all zero" (they differ only for values cancelling exactly)
        if keypoint.sum() == 0:
            return keypoint, None
        num_person = keypoint.shape[0]
        if num_person not in (1, 2):
            raise ValueError(f"PreNormalize3D handles 1 or 2 persons, got {num_person}")

        present = ~np.isclose(keypoint, 0).all(axis=(2, 3))  # (M, T): body has a non-zero joint
        counts = present.sum(axis=1)
        if num_person == 2 and counts[0] < counts[1]:
            keypoint = keypoint[::-1][:, present[1]]
        else:
            keypoint = keypoint[:, present[0]]
        if keypoint.shape[1] == 0:
            raise ValueError("PreNormalize3D: the main body is ~0 in every frame")

        # centre: first kept frame of the main body, spine mid for NTU's 25 joints, else the last joint
        center_joint = 1 if keypoint.shape[2] == 25 else -1
        body_center = keypoint[0, 0, center_joint].copy()
        # in the annotation's dtype (float16 stays float16); exact-zero joints stay zero
        nonzero = (keypoint != 0).any(axis=-1, keepdims=True)
        keypoint = (keypoint - body_center) * nonzero

        bottom, top = keypoint[0, 0, self.zaxis[0]], keypoint[0, 0, self.zaxis[1]]
        keypoint = keypoint.astype(np.float64) @ _rotation_onto(top - bottom, _Z_TARGET).T
        right, left = keypoint[0, 0, self.xaxis[0]], keypoint[0, 0, self.xaxis[1]]
        keypoint = keypoint @ _rotation_onto(right - left, _X_TARGET).T
        return keypoint, body_center


class PreNormalize2D:
    """PYSKL ``PreNormalize2D`` (mode 'fix'): pixels -> [-1, 1], score appended as channel 3.

    ``__call__(keypoint, keypoint_score, img_shape=None)`` takes keypoint ``(M, T, V, 2)`` pixels
    and keypoint_score ``(M, T, V)``; returns ``(M, T, V, 3)`` float32 (x, y, score) with
    x -> (x - w/2) / (w/2), y -> (y - h/2) / (h/2) for ``img_shape`` (h, w) (default
    ``self.img_shape``), and x = y = 0 where score <= threshold.
    """

    def __init__(self, img_shape=(1080, 1920), threshold=0.01):
        self.img_shape = tuple(img_shape)
        self.threshold = threshold

    def __call__(self, keypoint, keypoint_score, img_shape=None):
        keypoint = np.asarray(keypoint)
        if keypoint.ndim != 4 or keypoint.shape[-1] != 2:
            raise ValueError(f"PreNormalize2D needs keypoint (M, T, V, 2), got shape {keypoint.shape}")
        if np.shape(keypoint_score) != keypoint.shape[:-1]:
            raise ValueError(f"keypoint_score shape {np.shape(keypoint_score)} does not match "
                             f"keypoint shape {keypoint.shape} (expected {keypoint.shape[:-1]})")
        score = np.asarray(keypoint_score, dtype=np.float32)[..., None]
        out = np.concatenate([keypoint.astype(np.float32), score], axis=-1)
        h, w = self.img_shape if img_shape is None else img_shape
        out[..., 0] = (out[..., 0] - w / 2) / (w / 2)
        out[..., 1] = (out[..., 1] - h / 2) / (h / 2)
        out[..., :2][out[..., 2] <= self.threshold] = 0
        return out


def derive_modality(keypoint, layout, modality, features=PYSKL):
    """PYSKL ``GenSkeFeat(dataset=layout, feats=[modality])`` on a normalised sequence, as float32.

    The result equals what PYSKL's ``PoseDecode`` casts to float32 after sampling, so sampling
    the stored float32 array gives bit-identical clips. ``features`` (msg3d.data.features) says
    how bone and motion treat a 2D score channel.
    """
    if modality == "j":
        out = keypoint
    elif modality == "b":
        out = joint_to_bone(keypoint, layout, features)
    elif modality == "jm":
        out = to_motion(keypoint, layout, features)
    elif modality == "bm":
        # motion of the float32 bones, in float32 (PYSKL's order of casts)
        out = to_motion(joint_to_bone(keypoint, layout, features), layout, features)
    else:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return np.asarray(out, dtype=np.float32)
