"""PYSKL's ``ToMotion`` (REFERENCE §4.3): the motion of a joint or bone sequence. numpy only."""

import numpy as np

from msg3d.data.features import PYSKL, get_features
from msg3d.layouts import get_layout


def to_motion(x, layout, features=PYSKL):
    """out[:, t] = x[:, t+1] - x[:, t], last frame 0, in the dtype of ``x``.

    ``x`` (M, T, V, C) -> (M, T, V, C); ``layout`` is a ``Layout`` or its name. For 2D data with a
    score channel (C=3), PYSKL's convention (``features``, msg3d.data.features) makes that channel
    the mean of the two frames' scores instead; MS-G3D's Kinetics convention differences it too.
    """
    layout = get_layout(layout) if isinstance(layout, str) else layout
    x = np.asarray(x)
    motion = np.zeros_like(x)
    motion[:, :-1] = x[:, 1:] - x[:, :-1]
    if get_features(features).averages_score(layout, x.shape[-1]):
        motion[:, :-1, :, 2] = (x[:, :-1, :, 2] + x[:, 1:, :, 2]) / 2
    return motion
