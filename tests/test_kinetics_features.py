"""Kinetics-Skeleton 400 beyond the conversion: the OpenPose-18 layout, MS-G3D's feature convention
(bone and motion of (x, y, score)), the recipe, all-frames sampling, train/val split names, and the
bone stream against MS-G3D's own gen_bone_data.py output (REFERENCE §14)."""

import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES, TEST_FIXTURES, shared_file
from msg3d.cli import main as cli_main
from msg3d.data.derive import derive_annotations, sample_features
from msg3d.data.features import MSG3D_KINETICS, PYSKL, get_features
from msg3d.data.kinetics_raw import convert_kinetics
from msg3d.data.pyskl_io import load_annotations
from msg3d.data.sampling import uniform_sample
from msg3d.data.store import open_store
from msg3d.engine.hparams import resolve_hparams
from msg3d.layouts import OPENPOSE, get_layout
from msg3d.models import build_model
from msg3d.models.graph import binary_adjacency, hop_distance


def test_openpose_layout_is_referencess_tree_of_diameter_8():
    layout = get_layout("openpose")
    assert layout is OPENPOSE and layout.num_joints == 18 and layout.center == 1 and not layout.is_3d
    assert layout.joint_names[:2] == ("nose", "neck") and layout.joint_names[17] == "left_ear"
    assert len(layout.edges) == 17  # a tree on 18 joints
    dist = hop_distance(binary_adjacency(layout))
    assert np.isfinite(dist).all() and dist.max() == 8  # hence MS-G3D's 8 GCN scales
    assert [v1 for v1, _ in layout.bone_pairs] == list(range(18))
    assert dict(layout.bone_pairs)[17] == 15 and dict(layout.bone_pairs)[0] == 0


def _clip(rng, persons=2, frames=300):
    keypoint = rng.uniform(-0.5, 0.5, (persons, frames, 18, 2)).astype(np.float32)
    score = rng.uniform(0, 1, (persons, frames, 18)).astype(np.float32)
    return {"frame_dir": "abc", "label": 0, "keypoint": keypoint, "keypoint_score": score, "total_frames": frames}


def test_msg3d_kinetics_features_subtract_the_score_like_a_coordinate():
    ann = _clip(np.random.default_rng(0))
    joint = np.concatenate([ann["keypoint"], ann["keypoint_score"][..., None]], axis=-1)
    assert np.array_equal(sample_features(ann, "openpose", "j", "msg3d-kinetics"), joint)
    bone = sample_features(ann, "openpose", "b", "msg3d-kinetics")
    for v1, v2 in OPENPOSE.bone_pairs:
        assert np.array_equal(bone[:, :, v1], joint[:, :, v1] - joint[:, :, v2])
    motion = sample_features(ann, "openpose", "jm", "msg3d-kinetics")
    assert np.array_equal(motion[:, :-1], joint[:, 1:] - joint[:, :-1]) and not motion[:, -1].any()
    bone_motion = sample_features(ann, "openpose", "bm", "msg3d-kinetics")
    assert np.array_equal(bone_motion[:, :-1], bone[:, 1:] - bone[:, :-1])
    # PYSKL's convention on the same data averages the score channel instead
    pyskl_bone = sample_features(dict(ann, img_shape=(1, 1)), "openpose", "b", "pyskl")
    v1, v2 = OPENPOSE.bone_pairs[5]
    assert np.allclose(pyskl_bone[:, :, v1, 2], (joint[:, :, v1, 2] + joint[:, :, v2, 2]) / 2)


def test_feature_conventions_are_named_once():
    assert get_features("pyskl") is PYSKL and get_features(None) is PYSKL
    assert get_features(MSG3D_KINETICS) is MSG3D_KINETICS
    with pytest.raises(ValueError, match="unknown feature convention 'kinetics'; known: pyskl, msg3d-kinetics"):
        get_features("kinetics")


def _reference_release(tmp_path, reference):
    root = tmp_path / "release"
    for name, text in reference["files"].items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    convert_kinetics(root, tmp_path / "k.pkl", jobs=1)
    return load_annotations(tmp_path / "k.pkl")


def _assert_bone_matches(data, bones):
    by_id = {ann["frame_dir"]: ann for ann in data["annotations"]}
    assert sorted(by_id) == sorted(bones)
    for video, expected in bones.items():
        bone = sample_features(by_id[video], "openpose", "b", "msg3d-kinetics")  # (M, T, V, C)
        assert np.array_equal(bone.transpose(3, 1, 2, 0), expected), video  # MS-G3D's (C, T, V, M)


def test_bone_equals_msg3ds_gen_bone_data_on_the_shared_fixture(tmp_path):
    reference = torch.load(shared_file(FIXTURES / "msg3d_kinetics_ref.pt"), weights_only=True)
    data = _reference_release(tmp_path, reference)
    _assert_bone_matches(data, {v: r["bone"].numpy() for v, r in reference["reference"].items()})


def test_bone_equals_msg3ds_gen_bone_data_on_the_committed_fixture(tmp_path):
    with np.load(TEST_FIXTURES / "msg3d_kinetics_small_ref.npz") as z:
        reference = {"files": json.loads(z["files_json"].tobytes().decode("utf-8"))}
        bones = dict(zip(z["ids"].tolist(), z["bone"]))
    data = _reference_release(tmp_path, reference)
    _assert_bone_matches(data, bones)


def test_kinetics_recipe_is_msg3ds():
    hp = resolve_hparams(recipe="msg3d-kinetics")
    assert (hp.epochs, hp.repeat, hp.lr, hp.lr_batch, hp.weight_decay, hp.momentum, hp.nesterov) == (
        65, 1, 0.1, 128, 3e-4, 0.9, True)
    assert (hp.lr_schedule, hp.lr_steps, hp.lr_gamma) == ("multistep", (45, 55), 0.1)
    assert (hp.clip_len, hp.val_clips, hp.test_clips) == (300, 1, 1)
    assert (hp.model.num_gcn_scales, hp.model.num_g3d_scales, hp.model.base_channels) == (8, 8, 96)
    # a user's overrides go over the recipe, model key by key
    hp = resolve_hparams({"epochs": 10, "lr_steps": [4, 8], "model": {"base_channels": 12}}, "msg3d-kinetics")
    assert (hp.epochs, hp.lr_steps, hp.model.num_gcn_scales, hp.model.base_channels) == (10, (4, 8), 8, 12)
    with pytest.raises(ValueError, match="unknown recipe 'kinetics'; known recipes: pyskl, msg3d-kinetics"):
        resolve_hparams(recipe="kinetics")


def test_all_300_frames_in_order_is_uniform_sample_of_300():
    """MS-G3D's Kinetics input (every frame, no resampling) is UniformSample(300) of a 300-frame clip."""
    everything = np.arange(300)
    assert np.array_equal(uniform_sample(300, 300, 1, test_mode=True), everything)
    for seed in range(3):
        assert np.array_equal(uniform_sample(300, 300, 1, rng=np.random.default_rng(seed)), everything)


def test_kinetics_model_builds_with_8_scales_on_x_y_score():
    torch.manual_seed(0)
    model = build_model(400, layout="openpose", in_channels=3, base_channels=6, num_gcn_scales=8,
                        num_g3d_scales=8).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 2, 300, 18, 3))
    assert logits.shape == (2, 400) and torch.isfinite(logits).all()


def _kinetics_annotations(rng, per_split=(8, 4), num_classes=2):
    annotations, split = [], {"train": [], "val": []}
    for part, count in zip(("train", "val"), per_split):
        for i in range(count):
            ann = _clip(rng, frames=40)
            ann.update(frame_dir=f"{part}{i:03d}", label=i % num_classes)
            ann["keypoint"][..., 0] += 0.3 * ann["label"]
            annotations.append(ann)
            split[part].append(ann["frame_dir"])
    return {"split": split, "annotations": annotations}


def test_train_and_val_split_names_are_explicit(tmp_path, capsys):
    store = derive_annotations(_kinetics_annotations(np.random.default_rng(1)), tmp_path / "store", "openpose", "b",
                               features="msg3d-kinetics", progress=False)
    meta = open_store(store).meta
    assert (meta["layout"], meta["features"], meta["channels"]) == ("openpose", "msg3d-kinetics", 3)
    hp = {"epochs": 1, "repeat": 1, "batch_size": 4, "clip_len": 8, "num_workers": 0, "test_clips": 2,
          "model": {"base_channels": 6, "num_gcn_scales": 2, "num_g3d_scales": 2}}
    args = ["train", "--data", str(store), "--split", "val", "--out", str(tmp_path / "run"), "--device", "cpu",
            "--hparams-json", json.dumps(hp), "--seed", "0"]
    # PYSKL's K400 pickles name their splits train / val: --split alone finds no val_train / val_val
    assert cli_main(args) == 2
    assert "split 'val' needs 'val_train' and 'val_val'" in capsys.readouterr().err
    assert cli_main(args + ["--train-split", "train", "--val-split", "nope"]) == 2
    assert "split 'nope' not in store" in capsys.readouterr().err
    assert cli_main(args + ["--train-split", "train", "--val-split", "val"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["data"]["train_split"], config["data"]["val_split"]) == ("train", "val")
    # the test uses the checkpoint's recorded test_clips
    assert cli_main(["test", "--data", str(store), "--split", "val", "--checkpoint", str(tmp_path / "run" / "best.pth"),
                     "--out", str(tmp_path / "scores.pkl"), "--num-workers", "0", "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "scores_metrics.json").read_text())
    assert (metrics["num_clips"], metrics["num_samples"], metrics["split"]) == (2, 4, "val")
