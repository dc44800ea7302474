"""PYSKL's ``JointToBone`` (REFERENCE §4.3): the bone modality of a skeleton sequence. numpy only."""

import numpy as np

from msg3d.data.features import PYSKL, get_features
from msg3d.layouts import get_layout


def joint_to_bone(keypoint, layout, features=PYSKL):
    """bone[v1] = joint[v1] - joint[v2] for the layout's ``bone_pairs`` ``(v1, v2)``.

    ``keypoint`` (M, T, V, C) -> float32 (M, T, V, C); ``layout`` is a ``Layout`` or its name. For
    2D data with a score channel (C=3), PYSKL's convention (``features``, msg3d.data.features) makes
    that channel the mean of the two joints' scores; MS-G3D's Kinetics convention subtracts it too.
    Raises ValueError when V is not the layout's joint count.
    """
    layout = get_layout(layout) if isinstance(layout, str) else layout
    keypoint = np.asarray(keypoint)
    if keypoint.shape[2] != layout.num_joints:
        raise ValueError(f"layout {layout.name!r} has {layout.num_joints} joints, "
                         f"keypoint has {keypoint.shape[2]}")
    v1, v2 = (list(ix) for ix in zip(*layout.bone_pairs))
    bone = np.zeros(keypoint.shape, dtype=np.float32)
    bone[..., v1, :] = keypoint[..., v1, :] - keypoint[..., v2, :]
    if get_features(features).averages_score(layout, keypoint.shape[-1]):
        bone[..., v1, 2] = (keypoint[..., v1, 2] + keypoint[..., v2, 2]) / 2
    return bone
