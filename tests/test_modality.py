"""PreNormalize3D / PreNormalize2D / bone / motion against PYSKL's outputs (pyskl_pipeline_ref.pt)."""

import numpy as np
import pytest
import torch
from conftest import FIXTURES, shared_file

from msg3d.data.bone import joint_to_bone
from msg3d.data.modality import PreNormalize2D, PreNormalize3D, derive_modality
from msg3d.data.motion import to_motion

MODALITIES = ("j", "b", "jm", "bm")


@pytest.fixture(scope="module")
def ref():
    return torch.load(shared_file(FIXTURES / "pyskl_pipeline_ref.pt"), weights_only=True)


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_prenormalize3d_matches_pyskl(ref, name):
    r = ref[name]
    out, center = PreNormalize3D()(r["input_keypoint"].numpy())
    expected = r["prenorm3d_keypoint"].numpy()
    assert out.dtype == np.float64
    assert out.shape == expected.shape
    assert out.shape[1] == r["prenorm3d_total_frames"]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(center, r["prenorm3d_body_center"].numpy())


def test_prenormalize3d_drops_frames_and_swaps_bodies(ref):
    # B: body 0 present in frames 0-49, body 1 in 10-79 -> keep body 1's 70 frames, body 1 first
    r = ref["B"]
    x = r["input_keypoint"].numpy()
    out, center = PreNormalize3D()(x)
    assert out.shape[1] == 70 == r["prenorm3d_total_frames"]
    np.testing.assert_array_equal(center, x[1, 10, 1])  # main body = input body 1, first kept frame
    assert not out[1, 40:].any()  # input body 0 is absent from frame 50 on: stays exactly zero


@pytest.mark.parametrize("name", ["A", "B", "C"])
@pytest.mark.parametrize("modality", MODALITIES)
def test_modalities_match_pyskl(ref, name, modality):
    r = ref[name]
    out = derive_modality(r["prenorm3d_keypoint"].numpy(), "nturgb+d", modality)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, r[modality].numpy(), rtol=0, atol=1e-5)


def test_prenormalize2d_matches_pyskl(ref):
    r = ref["coco2d"]
    out = PreNormalize2D()(r["input_keypoint"].numpy(), r["input_keypoint_score"].numpy(), r["img_shape"])
    assert out.dtype == np.float32 and out.shape == (2, 30, 17, 3)
    np.testing.assert_allclose(out, r["prenorm2d_keypoint"].numpy(), rtol=0, atol=1e-6)
    # the fixture has scores below the 0.01 threshold: their x, y are zeroed, the score kept
    low = r["input_keypoint_score"].numpy() <= 0.01
    assert low.any()
    assert not out[..., :2][low].any()
    np.testing.assert_array_equal(out[..., 2], r["input_keypoint_score"].numpy())


@pytest.mark.parametrize("modality", MODALITIES)
def test_coco_modalities_match_pyskl(ref, modality):
    r = ref["coco2d"]
    out = derive_modality(r["prenorm2d_keypoint"].numpy(), "coco", modality)
    np.testing.assert_allclose(out, r[modality].numpy(), rtol=0, atol=1e-5)


def test_prenormalize2d_uses_image_shape():
    kp = np.array([[[[100.0, 50.0]]]], dtype=np.float32)
    score = np.ones((1, 1, 1), dtype=np.float32)
    out = PreNormalize2D()(kp, score, img_shape=(200, 400))
    np.testing.assert_allclose(out[0, 0, 0], [(100 - 200) / 200, (50 - 100) / 100, 1.0])


def test_prenormalize3d_centers_float16_in_float16():
    # Spine (0 -> 1) along +z and shoulders (4 -> 8) along +x: both rotations are the identity,
    # so the output is exactly the centering, which must run in float16 (REFERENCE §4.3).
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, size=(1, 4, 25, 3)).astype(np.float16)
    x[0, 0, 0] = x[0, 0, 1] + np.array([0.0, 0.0, -0.5], dtype=np.float16)
    x[0, 0, 8] = x[0, 0, 4] + np.array([0.3, 0.0, 0.0], dtype=np.float16)
    out, center = PreNormalize3D()(x)
    expected16 = (x - x[0, 0, 1]).astype(np.float64)  # float16 subtraction, then widened
    widened = x.astype(np.float32) - x[0, 0, 1].astype(np.float32)
    assert center.dtype == np.float16
    np.testing.assert_array_equal(out, expected16)
    assert np.abs(widened - expected16).max() > 1e-4  # the test can tell the two orders apart


def _rodrigues(vector, target):
    """Rotation (p -> R p) by the angle between ``vector`` and ``target`` about their cross product."""
    axis = np.cross(vector.astype(np.float64), target)
    axis /= np.linalg.norm(axis)
    unit = vector / np.linalg.norm(vector)  # in the vector's own dtype, as PYSKL computes it
    angle = np.arccos(np.clip(np.dot(unit.astype(np.float64), target), -1, 1))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def test_prenormalize3d_rotates_float16_data_with_float16_unit_vectors():
    # PYSKL keeps float16 through the centering and the spine's unit vector (np.linalg.norm of a
    # float16 vector is float16); only the rotation itself is float64. Expected values by
    # Rodrigues' formula, a different route to the same rotations.
    x = np.random.default_rng(3).uniform(-1.0, 1.0, size=(2, 6, 25, 3)).astype(np.float16)
    x[1, :2] = 0  # second body absent at first
    x[0, 3, 7] = 0  # a missing joint
    centered = (x - x[0, 0, 1]) * (x != 0).any(-1, keepdims=True)
    assert centered.dtype == np.float16
    spine = centered[0, 0, 1] - centered[0, 0, 0]
    after_z = centered.astype(np.float64) @ _rodrigues(spine, [0.0, 0.0, 1.0]).T
    shoulders = after_z[0, 0, 8] - after_z[0, 0, 4]
    want = after_z @ _rodrigues(shoulders, [1.0, 0.0, 0.0]).T
    out, center = PreNormalize3D()(x)
    np.testing.assert_array_equal(center, x[0, 0, 1])
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    assert not out[0, 3, 7].any() and not out[1, :2].any()  # zeros stay exactly zero
    # a float64 unit vector would move the output by far more than the tolerance
    wide = centered.astype(np.float64) @ _rodrigues(spine.astype(np.float64), [0.0, 0.0, 1.0]).T
    wide = wide @ _rodrigues(wide[0, 0, 8] - wide[0, 0, 4], [1.0, 0.0, 0.0]).T
    assert np.abs(wide - want).max() > 1e-4


def test_prenormalize3d_zero_joints_stay_zero_and_empty_frames_drop():
    x = np.zeros((1, 5, 25, 3))
    x[0, :, :, :] = np.arange(75).reshape(25, 3) + 1.0
    x[0, 2] = 0  # empty frame -> dropped
    x[0, 3, 7] = 0  # missing joint -> stays exactly 0 after centering and rotation
    out, _ = PreNormalize3D()(x)
    assert out.shape == (1, 4, 25, 3)
    np.testing.assert_array_equal(out[0, 2, 7], 0.0)
    assert np.abs(out[0, 2, 6]).sum() > 0


def test_prenormalize3d_all_zero_unchanged_and_person_limit():
    zeros = np.zeros((3, 6, 25, 3), dtype=np.float16)
    out, center = PreNormalize3D()(zeros)
    assert out is zeros and center is None
    with pytest.raises(ValueError, match="1 or 2 persons"):
        PreNormalize3D()(np.ones((3, 6, 25, 3)))


def test_joint_to_bone_pairs_hand_computed():
    kp = np.random.default_rng(0).normal(size=(2, 3, 25, 3))
    bone = joint_to_bone(kp, "nturgb+d")
    assert bone.dtype == np.float32
    np.testing.assert_allclose(bone[..., 0, :], kp[..., 0, :] - kp[..., 1, :], rtol=1e-6)
    np.testing.assert_array_equal(bone[..., 20, :], 0)  # spine shoulder: zero bone
    np.testing.assert_allclose(bone[..., 21, :], kp[..., 21, :] - kp[..., 22, :], rtol=1e-6)  # tip - thumb
    np.testing.assert_allclose(bone[..., 22, :], kp[..., 22, :] - kp[..., 7, :], rtol=1e-6)  # thumb - hand
    np.testing.assert_allclose(bone[..., 24, :], kp[..., 24, :] - kp[..., 11, :], rtol=1e-6)


def test_coco_bone_and_motion_score_channel_is_averaged():
    kp = np.random.default_rng(0).uniform(size=(1, 3, 17, 3)).astype(np.float32)
    bone = joint_to_bone(kp, "coco")
    np.testing.assert_allclose(bone[..., 11, :2], kp[..., 11, :2] - kp[..., 0, :2])  # hip from nose
    np.testing.assert_allclose(bone[..., 11, 2], (kp[..., 11, 2] + kp[..., 0, 2]) / 2)
    np.testing.assert_allclose(bone[..., 0, 2], kp[..., 0, 2])  # nose keeps its score
    motion = to_motion(kp, "coco")
    np.testing.assert_allclose(motion[:, 0, :, :2], kp[:, 1, :, :2] - kp[:, 0, :, :2])
    np.testing.assert_allclose(motion[:, 1, :, 2], (kp[:, 1, :, 2] + kp[:, 2, :, 2]) / 2)
    np.testing.assert_array_equal(motion[:, -1], 0)


def test_motion_keeps_dtype_and_handles_one_frame():
    x = np.arange(2 * 3 * 25 * 3, dtype=np.float64).reshape(2, 3, 25, 3)
    m = to_motion(x, "nturgb+d")
    assert m.dtype == np.float64
    np.testing.assert_array_equal(m[:, :2], 75.0)
    np.testing.assert_array_equal(m[:, 2], 0.0)
    assert not to_motion(x[:, :1], "nturgb+d").any()


def test_derive_modality_errors():
    with pytest.raises(ValueError, match="unknown modality 'x'"):
        derive_modality(np.zeros((1, 2, 25, 3)), "nturgb+d", "x")
    with pytest.raises(ValueError, match="17 joints, keypoint has 25"):
        joint_to_bone(np.zeros((1, 2, 25, 3)), "coco")
