"""Derived store: round trip, atomic writes, the derive command and its refusals."""

import json
import pickle

import numpy as np
import pytest

import msg3d.data.derive as derive_module
from msg3d.cli import main as cli_main
from msg3d.data.derive import derive_annotations
from msg3d.data.modality import PreNormalize2D, PreNormalize3D, derive_modality
from msg3d.data.store import StoreWriter, open_store
from msg3d.fileio import sha256_file


def random_samples(n, persons=(1, 2), frames=(5, 20), joints=25, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = (int(rng.choice(persons)), int(rng.integers(*frames)), joints, channels)
        out.append((f"S{i:03d}", i % 4, rng.normal(size=shape).astype(np.float32)))
    return out


def annotations_3d(n=4, seed=0):
    anns = [{"frame_dir": f, "label": l, "total_frames": kp.shape[1], "keypoint": kp.astype(np.float16)}
            for f, l, kp in random_samples(n, seed=seed)]
    names = [a["frame_dir"] for a in anns]
    return {"split": {"train": names[1:], "val": names[:1]}, "annotations": anns}


def leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}"))


def test_round_trip(tmp_path):
    samples = random_samples(6)
    out = tmp_path / "store"
    with StoreWriter(out, num_joints=25, channels=3) as writer:
        for frame_dir, label, kp in samples:
            writer.append(frame_dir, label, kp)
        # split members listed out of order: the store keeps annotation order
        writer.finish(splits={"a": ["S004", "S001"], "b": ["S000", "S002", "S003", "S005"]},
                      meta={"layout": "nturgb+d", "modality": "j"})
    store = open_store(out)
    assert len(store) == 6
    assert store.meta["num_classes"] == 4 and store.meta["num_samples"] == 6
    assert store.meta["layout"] == "nturgb+d" and store.meta["channels"] == 3
    assert list(store.frame_dirs) == [s[0] for s in samples]
    np.testing.assert_array_equal(store.labels, [s[1] for s in samples])
    np.testing.assert_array_equal(store.splits["a"], [1, 4])
    for i, (_, _, kp) in enumerate(samples):
        np.testing.assert_array_equal(store.sample(i), kp)
        np.testing.assert_array_equal(store.read_sample(i), kp)
    assert isinstance(store.data, np.memmap) and store.data.dtype == np.float32
    assert store.data.shape == (sum(kp.shape[0] * kp.shape[1] for *_, kp in samples), 25, 3)
    assert pickle.loads(pickle.dumps(store))._data is None  # workers reopen the memmap, no copy
    with pytest.raises(ValueError, match="unknown split 'c'; available splits: a, b"):
        store.split_indices("c")


def test_failed_write_leaves_no_store_and_keeps_the_old_one(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(out, num_joints=25, channels=3) as writer:
            writer.append("S000", 0, np.zeros((1, 3, 25, 3)))
            raise RuntimeError("boom")
    assert not out.exists() and leftovers(tmp_path, "store") == []

    derive_annotations(annotations_3d(), out, "nturgb+d", "j", progress=False)
    before = open_store(out).data.copy()
    with pytest.raises(RuntimeError, match="without finish"):
        with StoreWriter(out, num_joints=25, channels=3) as writer:
            writer.append("S000", 0, np.zeros((1, 3, 25, 3)))
    np.testing.assert_array_equal(open_store(out).data, before)
    assert leftovers(tmp_path, "store") == []


def test_derive_failure_midway_leaves_no_store(tmp_path, monkeypatch):
    calls = []
    real = derive_module.derive_modality

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(derive_module, "derive_modality", failing)
    with pytest.raises(OSError, match="disk full"):
        derive_annotations(annotations_3d(), tmp_path / "store", "nturgb+d", "b", progress=False)
    assert not (tmp_path / "store").exists() and leftovers(tmp_path, "store") == []


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="S000: keypoint shape \\(1, 3, 17, 3\\) does not fit"):
        with StoreWriter(tmp_path / "s", num_joints=25, channels=3) as writer:
            writer.append("S000", 0, np.zeros((1, 3, 17, 3)))
    with pytest.raises(ValueError, match="split 'x' lists 1 frame_dir"):
        with StoreWriter(tmp_path / "s", num_joints=25, channels=3) as writer:
            writer.append("S000", 0, np.zeros((1, 3, 25, 3)))
            writer.finish(splits={"x": ["S999"]}, meta={})
    assert not (tmp_path / "s").exists()


def test_open_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="derived store not found"):
        open_store(tmp_path / "nope")
    out = tmp_path / "store"
    derive_annotations(annotations_3d(), out, "nturgb+d", "j", progress=False)
    meta = json.loads((out / "meta.json").read_text())
    meta["num_joints"] = 17
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="corrupt derived store.*index expects float32"):
        open_store(out)
    meta["num_joints"] = 25
    (out / "meta.json").write_text(json.dumps(meta))
    with open(out / "data.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="corrupt derived store: cannot map data.npy"):
        open_store(out)
    (out / "index.npz").unlink()
    with pytest.raises(FileNotFoundError, match="not a derived store, missing index.npz"):
        open_store(out)


@pytest.mark.parametrize("modality", ["j", "b", "jm", "bm"])
def test_derive_3d_store_holds_the_derived_sequences(tmp_path, modality):
    data = annotations_3d()
    store = open_store(derive_annotations(data, tmp_path / modality, "nturgb+d", modality, progress=False))
    assert store.meta["modality"] == modality and store.meta["kind"] == "3d"
    assert store.meta["num_classes"] == 4
    for i, ann in enumerate(data["annotations"]):
        expected = derive_modality(PreNormalize3D()(ann["keypoint"])[0], "nturgb+d", modality)
        np.testing.assert_array_equal(store.sample(i), expected)
        assert store.total_frames[i] == expected.shape[1]
    np.testing.assert_array_equal(store.splits["val"], [0])


def test_derive_2d_keeps_first_two_persons(tmp_path):
    rng = np.random.default_rng(0)
    ann = {"frame_dir": "S000", "label": 2, "total_frames": 6, "img_shape": (480, 640),
           "keypoint": rng.uniform(0, 480, size=(3, 6, 17, 2)).astype(np.float16),
           "keypoint_score": rng.uniform(size=(3, 6, 17)).astype(np.float16)}
    store = open_store(derive_annotations({"split": {"all": ["S000"]}, "annotations": [ann]},
                                          tmp_path / "s", "coco", "bm", num_classes=60, progress=False))
    assert store.meta["num_classes"] == 60 and store.meta["kind"] == "2d"
    expected = derive_modality(PreNormalize2D()(ann["keypoint"], ann["keypoint_score"], (480, 640)), "coco", "bm")
    assert store.num_person[0] == 2
    np.testing.assert_array_equal(store.sample(0), expected[:2])


def test_derive_refuses_mismatched_layout(tmp_path):
    with pytest.raises(ValueError, match="layout 'coco' needs 2D .* with 17 joints, but S000 has 3D "
                                         "\\(C=3\\) keypoints with 25 joints \\(and 3 more sample"):
        derive_annotations(annotations_3d(), tmp_path / "s", "coco", "j", progress=False)
    ann2d = {"frame_dir": "S000", "label": 0, "total_frames": 4,
             "keypoint": np.ones((1, 4, 17, 2), np.float16), "keypoint_score": np.ones((1, 4, 17), np.float16)}
    with pytest.raises(ValueError, match="layout 'nturgb\\+d' needs 3D \\(C=3\\) keypoints with 25 joints, "
                                         "but S000 has 2D"):
        derive_annotations({"split": {"a": ["S000"]}, "annotations": [ann2d]}, tmp_path / "s", "nturgb+d", "j")
    three = annotations_3d()
    three["annotations"][2]["keypoint"] = np.ones((3, 5, 25, 3), np.float16)
    three["annotations"][2]["total_frames"] = 5
    with pytest.raises(ValueError, match="S002: PreNormalize3D handles 1 or 2 persons, got 3"):
        derive_annotations(three, tmp_path / "s", "nturgb+d", "j", progress=False)
    assert not (tmp_path / "s").exists()


def test_derive_cli(tmp_path, capsys):
    ann = tmp_path / "ann.pkl"
    ann.write_bytes(pickle.dumps(annotations_3d()))
    out = tmp_path / "store_jm"
    assert cli_main(["derive", str(ann), str(out), "--layout", "nturgb+d", "--modality", "jm"]) == 0
    assert "derive jm: 4/4 samples" in capsys.readouterr().err
    meta = open_store(out).meta
    assert meta["source"] == {"name": "ann.pkl", "sha256": sha256_file(ann)}
    assert "PreNormalize3D" in meta["pipeline"] and "feats=['jm']" in meta["pipeline"]
    assert cli_main(["derive", str(ann), str(tmp_path / "c"), "--layout", "coco", "--modality", "j"]) == 2
    assert capsys.readouterr().err.startswith("msg3d derive: error: layout 'coco' needs 2D")
