"""Small synthetic bodies and ``.skeleton`` texts for the raw-conversion tests.

Every coordinate has at most 4 decimals, so it survives the text round trip exactly and the
expected arrays can be written down from the same numbers (cast to float32, then float16).
"""

import numpy as np

from msg3d.data.ntu_raw import format_skeleton_file

BODY_ID = 72057594037932219  # Kinect-like 64-bit IDs; ID + 1 collides with ID as float64

_J = np.arange(25, dtype=np.float64)
# An upright body: x-range 0.48 <= 0.8 * y-range 1.2, so every frame is "plausible".
UPRIGHT = np.stack([0.02 * _J - 0.24, 0.05 * _J - 0.6, 3.0 + 0.01 * _J], axis=1)
# A lying/smeared body: x-range 2.4 > 0.8 * y-range 1.2, an implausible frame for PYSKL.
WIDE = np.stack([0.1 * _J - 1.2, 0.05 * _J - 0.6, 3.0 + 0.01 * _J], axis=1)


def body(n, step=(0.0, 0.0, 0.0), offset=(0.0, 0.0, 0.0), shape=UPRIGHT):
    """``(n, 25, 3)`` frames of ``shape`` moved by ``offset + t * step`` in frame t."""
    t = np.arange(n, dtype=np.float64)[:, None, None]
    return np.round(shape[None] + np.asarray(offset) + t * np.asarray(step), 4)


def frames(num_frames, *tracks):
    """Per-frame body lists from ``(body_id, [frame indices], (n, 25, 3) joints)`` tracks."""
    out = [[] for _ in range(num_frames)]
    for body_id, indices, joints in tracks:
        assert len(indices) == len(joints)
        for f, j in zip(indices, joints):
            out[f].append((body_id, j))
    return out


def skeleton_bytes(num_frames, *tracks, crlf=False):
    text = format_skeleton_file(frames(num_frames, *tracks))
    return (text.replace("\n", "\r\n") if crlf else text).encode()


def expected(*tracks):
    """float16 ``(M, T, 25, 3)`` from per-track ``(T, 25, 3)`` arrays (as PYSKL stores them)."""
    return np.stack(tracks).astype(np.float32).astype(np.float16)
