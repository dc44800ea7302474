"""Feature conventions: how a dataset's keypoints become the network's input channels.

Two conventions exist, and this module is the one place that names them (the derive command, the
store's meta, the bone and motion operators and ``msg3d predict`` all take them from here):

* ``pyskl`` (NTU RGB+D 3D and HRNet 2D; REFERENCE §4.3): ``PreNormalize3D`` or ``PreNormalize2D``
  before the modality; for 2D data the third channel is the detection score, which ``JointToBone``
  and ``ToMotion`` *average* (over the bone's two joints, over two frames) instead of differencing.
* ``msg3d-kinetics`` (Kinetics-Skeleton 400; REFERENCE §14 steps 3 and 5): the coordinates are
  already centred and flipped by the conversion (``msg3d convert-kinetics``), so there is no
  normalisation; the score is the third channel as it is, and bone and motion subtract all three
  channels, as MS-G3D's ``gen_bone_data.py`` and ``gen_motion_data.py`` do.

Torch-free, standard library only (the workflow imports it).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureConvention:
    """One convention.

    ``normalize``: run PYSKL's PreNormalize3D/2D on each full sequence before the modality.
    ``average_score``: for 2D data with a score channel (C=3), bone and motion average that channel
    rather than subtract it.
    """

    name: str
    normalize: bool
    average_score: bool
    description: str

    def averages_score(self, layout, channels):
        """Whether ``channels``-channel data of ``layout`` ends in a score channel that bone and
        motion average (2D data, C=3, under a convention that averages it)."""
        return self.average_score and not layout.is_3d and channels == 3


PYSKL = FeatureConvention(
    name="pyskl",
    normalize=True,
    average_score=True,
    description="PYSKL: PreNormalize3D/2D, then GenSkeFeat (2D scores averaged in bones and motion)",
)
MSG3D_KINETICS = FeatureConvention(
    name="msg3d-kinetics",
    normalize=False,
    average_score=False,
    description="MS-G3D Kinetics: (x, y, score) as converted, no normalisation; bones and motion subtract "
                "all three channels",
)

FEATURES = {convention.name: convention for convention in (PYSKL, MSG3D_KINETICS)}


def get_features(name):
    """The convention called ``name``, or a ValueError listing the known ones. A convention is
    returned as it is; None means PYSKL's (stores written before conventions were recorded)."""
    if isinstance(name, FeatureConvention):
        return name
    if name is None:
        return PYSKL
    try:
        return FEATURES[name]
    except KeyError:
        raise ValueError(f"unknown feature convention {name!r}; known: {', '.join(FEATURES)}") from None
