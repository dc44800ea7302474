"""Derived store: round trip, atomic writes, the derive command and its refusals."""

import json
import os
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
    with pytest.raises(ValueError, match="not a derived store, missing index.npz"):
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


# ---------------------------------------------------------------------------------------------
# damaged stores: one line naming the store and the file, at open


@pytest.fixture
def store(tmp_path):
    data = annotations_3d(6)
    names = [a["frame_dir"] for a in data["annotations"]]
    data["split"] = {"xsub_train": names[:4], "xsub_val": names[4:], "all": names}
    return derive_annotations(data, tmp_path / "store", "nturgb+d", "j", progress=False)


def damage_message(store, file):
    """open_store's error for ``store``: a ValueError of one line naming the store and ``file``."""
    with pytest.raises(ValueError) as info:
        open_store(store)
    message = str(info.value)
    assert "\n" not in message and str(store) in message and file in message, message
    return message


def edit_json(path, change):
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def edit_index(store, **arrays):
    with np.load(store / "index.npz") as index:
        content = {key: index[key] for key in index.files}
    content.update(arrays)
    for key in [key for key, value in arrays.items() if value is None]:
        del content[key]
    np.savez(store / "index.npz", **content)


@pytest.mark.parametrize("file", ["index.npz", "meta.json", "splits.json", "data.npy"])
def test_truncated_file(store, file):
    os.truncate(store / file, (store / file).stat().st_size // 2)
    message = damage_message(store, file)
    assert "corrupt derived store" in message and "rebuild it with `msg3d derive`" in message


@pytest.mark.parametrize("file", ["index.npz", "meta.json", "splits.json", "data.npy"])
def test_missing_file(store, file):
    (store / file).unlink()
    assert f"not a derived store, missing {file}" in damage_message(store, file)


@pytest.mark.parametrize("file", ["index.npz", "meta.json", "splits.json", "data.npy"])
def test_emptied_file(store, file):
    (store / file).write_bytes(b"")
    damage_message(store, file)


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.pop("num_classes"), "meta.json lacks num_classes"),
    (lambda m: m.update(num_joints="25"), "meta.json: num_joints is '25', expected an integer >= 1"),
    (lambda m: m.update(num_classes=True), "meta.json: num_classes is True, expected an integer >= 1"),
    (lambda m: m.update(num_classes=0), "meta.json: num_classes is 0, expected an integer >= 1"),
    (lambda m: m.update(layout=["nturgb+d"]), "meta.json: layout is ['nturgb+d'], expected a string"),
    (lambda m: m.update(layout="kinect"), "meta.json: layout 'kinect' is not one of"),
    (lambda m: m.update(num_samples=5), "index.npz has 6 samples, meta.json says 5"),
    (lambda m: m.update(num_rows=1), "index.npz ends at row"),
    (lambda m: m.update(format_version="1"), "meta.json: format_version is '1', expected an integer >= 1"),
])
def test_meta_with_wrong_keys_or_types(store, change, expected):
    edit_json(store / "meta.json", change)
    assert expected in damage_message(store, "meta.json")


def test_meta_of_another_format(store):
    edit_json(store / "meta.json", lambda m: m.update(format_version=2))
    with pytest.raises(ValueError, match="unsupported store format 'msg3d-derived-store' version 2 in meta.json"):
        open_store(store)


def test_meta_that_is_not_an_object(store):
    (store / "meta.json").write_text("[1, 2]")
    assert "meta.json holds a JSON list, not an object" in damage_message(store, "meta.json")


@pytest.mark.parametrize("content, expected", [
    ([[0, 1]], "splits.json holds a JSON list, not an object"),
    ({"xsub_train": "0 1 2"}, "split 'xsub_train' is not a list of sample indices"),
    ({"xsub_train": [0, 1.5]}, "split 'xsub_train' is not a list of sample indices"),
    ({"xsub_train": [0, 6]}, "split 'xsub_train' has sample indices outside [0, 6)"),
    ({"xsub_train": [2, 1]}, "split 'xsub_train' is not in ascending sample order"),
])
def test_splits_with_wrong_types_or_values(store, content, expected):
    (store / "splits.json").write_text(json.dumps(content))
    assert expected in damage_message(store, "splits.json")


def test_index_offsets_beyond_the_data(store):
    offsets = open_store(store).offsets.copy()
    offsets[4] += 10_000
    edit_index(store, offset=offsets)
    message = damage_message(store, "index.npz")
    assert f"sample 4 (S004) occupies rows {offsets[4]}.." in message and "rows of data.npy" in message


@pytest.mark.parametrize("arrays, expected", [
    ({"label": None}, "index.npz lacks the array(s) label"),
    ({"label": np.zeros(6, np.float32)}, "index.npz: label is a float32 array of shape (6,), expected one integer"),
    ({"frame_dir": np.arange(6)}, "index.npz: frame_dir is a int64 array of shape (6,), expected one string"),
    ({"num_person": np.ones(5, np.int64)}, "index arrays differ in length"),
    ({"total_frames": -np.ones(6, np.int64)}, "index.npz: sample 0 (S000) has total_frames -1"),
    ({"frame_dir": np.array(["S000", "S001", "S002", "S003", "S004", "S000"])},
     "index.npz: frame_dir S000 appears more than once"),
])
def test_index_with_wrong_arrays(store, arrays, expected):
    edit_index(store, **arrays)
    assert expected in damage_message(store, "index.npz")


def test_data_of_the_wrong_size(store):
    with open(store / "data.npy", "ab") as f:
        f.write(b"\0" * 12)
    assert "data.npy has" in damage_message(store, "data.npy")
    with open(store / "data.npy", "r+b") as f:
        f.write(b"garbage!")  # over the npy magic
    assert "cannot map data.npy" in damage_message(store, "data.npy")


def test_damaged_store_through_msg3d_train(store, tmp_path, capsys):
    os.truncate(store / "index.npz", (store / "index.npz").stat().st_size // 2)
    code = cli_main(["train", "--data", str(store), "--split", "xsub", "--out", str(tmp_path / "run"),
                     "--device", "cpu", "--seed", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"msg3d train: error: {store}: corrupt derived store: index.npz is not a valid .npz")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_short_read_after_open_names_store_and_sample(store):
    opened = open_store(store)
    os.truncate(store / "data.npy", opened.data.offset + int(opened.offsets[3]) * 25 * 3 * 4 + 8)
    assert opened.read_sample(2).shape == opened.sample(2).shape
    with pytest.raises(ValueError) as info:
        opened.read_sample(3)
    assert str(info.value).startswith(f"{store}: corrupt derived store: data.npy is truncated: sample 3 (S003) needs ")


# ---------------------------------------------------------------------------------------------
# labels and splits that do not fit the store


def test_label_outside_num_classes_refused_at_open(store):
    edit_json(store / "meta.json", lambda m: m.update(num_classes=2))
    with pytest.raises(ValueError) as info:
        open_store(store)
    assert str(info.value) == (f"{store}: sample 2 (S002) has label 2, but the store has num_classes 2: labels must "
                               "be in [0, 2) (and 1 more sample(s))")


def test_writer_refuses_labels_outside_num_classes(tmp_path):
    with pytest.raises(ValueError, match="sample 1 \\(B\\) has label 3, but the store has num_classes 3"):
        with StoreWriter(tmp_path / "s", num_joints=25, channels=3) as writer:
            writer.append("A", 0, np.zeros((1, 3, 25, 3)))
            writer.append("B", 3, np.zeros((1, 3, 25, 3)))
            writer.finish(splits={"all": ["A", "B"]}, meta={"layout": "nturgb+d", "num_classes": 3})
    assert not (tmp_path / "s").exists() and leftovers(tmp_path, "s") == []


