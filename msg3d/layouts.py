"""Skeleton layouts: joints, graph edges and bone pairs, shared by the graph and the data code.

Facts from PYSKL (see REFERENCE §1) and, for OpenPose-18, from ST-GCN / MS-G3D (REFERENCE §14).
Indices are 0-based.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """One skeleton layout.

    ``edges`` are PYSKL's (child, parent) "inward" graph edges; ``bone_pairs`` are the
    ``(v1, v2)`` pairs of ``JointToBone`` (bone[v1] = joint[v1] - joint[v2]), one per joint.
    They differ for NTU's hands: the graph hangs tip and thumb off the hand, the bones follow
    the original MS-G3D chain tip -> thumb -> hand. ``dims`` is 3 for 3D joints (x, y, z: Kinect)
    and 2 for 2D keypoints (x, y), to which PYSKL appends the detection score as a third channel.
    """

    name: str
    joint_names: tuple
    edges: tuple
    bone_pairs: tuple
    center: int
    dims: int

    @property
    def num_joints(self):
        return len(self.joint_names)

    @property
    def is_3d(self):
        return self.dims == 3


def _from_one_based(pairs):
    return tuple((a - 1, b - 1) for a, b in pairs)


NTU_RGBD = Layout(
    name="nturgb+d",
    joint_names=(
        "spine_base", "spine_mid", "neck", "head",
        "left_shoulder", "left_elbow", "left_wrist", "left_hand",
        "right_shoulder", "right_elbow", "right_wrist", "right_hand",
        "left_hip", "left_knee", "left_ankle", "left_foot",
        "right_hip", "right_knee", "right_ankle", "right_foot",
        "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip", "right_thumb",
    ),
    edges=_from_one_based((
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
        (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
        (20, 19), (22, 8), (23, 8), (24, 12), (25, 12),
    )),
    bone_pairs=(
        (0, 1), (1, 20), (2, 20), (3, 2), (4, 20), (5, 4), (6, 5), (7, 6), (8, 20), (9, 8),
        (10, 9), (11, 10), (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16), (18, 17),
        (19, 18), (21, 22), (20, 20), (22, 7), (23, 24), (24, 11),
    ),
    center=20,
    dims=3,
)

COCO = Layout(
    name="coco",
    joint_names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
        "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    edges=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8),
        (8, 6), (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2),
    ),
    bone_pairs=(
        (0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 0), (7, 5), (8, 6), (9, 7), (10, 8),
        (11, 0), (12, 0), (13, 11), (14, 12), (15, 13), (16, 14),
    ),
    center=0,
    dims=2,
)

# OpenPose-18 (ST-GCN's Kinetics-skeleton release); edges identical in ST-GCN, MS-G3D and PYSKL,
# bone pairs as MS-G3D's gen_bone_data.py (REFERENCE §14). A tree of diameter 8: MS-G3D's 8 scales.
OPENPOSE = Layout(
    name="openpose",
    joint_names=(
        "nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
        "left_shoulder", "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle",
        "left_hip", "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
    ),
    edges=(
        (4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2),
        (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14),
    ),
    bone_pairs=(
        (0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 2), (9, 8), (10, 9),
        (11, 5), (12, 11), (13, 12), (14, 0), (15, 0), (16, 14), (17, 15),
    ),
    center=1,
    dims=2,
)

LAYOUTS = {layout.name: layout for layout in (NTU_RGBD, COCO, OPENPOSE)}


def get_layout(name):
    """Return the layout called ``name`` ('nturgb+d', 'coco', 'openpose'), or raise a ValueError listing them."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown skeleton layout {name!r}; known layouts: {', '.join(LAYOUTS)}") from None
