"""Loading and validating PYSKL annotation pickles (`msg3d import-pyskl`)."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from msg3d.cli import main as cli_main
from msg3d.data.pyskl_io import MAX_REPORTED, load_annotations, split_samples, validate_annotations


def sample_3d(frame_dir, label=0, persons=2, frames=12, dtype=np.float16):
    kp = np.random.default_rng(abs(label)).normal(size=(persons, frames, 25, 3)).astype(dtype)
    return {"frame_dir": frame_dir, "label": label, "total_frames": frames, "keypoint": kp}


def sample_2d(frame_dir, label=0, persons=1, frames=9):
    rng = np.random.default_rng(label)
    return {
        "frame_dir": frame_dir, "label": label, "total_frames": frames,
        "keypoint": (rng.uniform(size=(persons, frames, 17, 2)) * 1000).astype(np.float16),
        "keypoint_score": rng.uniform(size=(persons, frames, 17)).astype(np.float16),
        "img_shape": (1080, 1920), "original_shape": (1080, 1920),
    }


def dataset(samples, splits=None):
    names = [s["frame_dir"] for s in samples]
    return {"split": splits or {"xsub_train": names[:1], "xsub_val": names[1:]}, "annotations": samples}


def problems_of(data, **kwargs):
    with pytest.raises(ValueError) as info:
        validate_annotations(data, source="ann.pkl", **kwargs)
    return str(info.value)


def test_valid_3d_and_2d_files_load(tmp_path):
    for i, data in enumerate([
        dataset([sample_3d("S001C001P001R001A001"), sample_3d("S001C001P001R001A002", label=1, persons=1)]),
        dataset([sample_2d("S001C001P001R001A001"), sample_2d("S001C001P001R001A002", label=1, persons=3)]),
    ]):
        path = tmp_path / f"ann{i}.pkl"
        path.write_bytes(pickle.dumps(data))
        loaded = load_annotations(path)
        assert [a["frame_dir"] for a in loaded["annotations"]] == [a["frame_dir"] for a in data["annotations"]]
        np.testing.assert_array_equal(loaded["annotations"][1]["keypoint"], data["annotations"][1]["keypoint"])


def test_problems_are_collected_and_named_by_frame_dir():
    bad_label = sample_3d("S001C001P001R001A003", label=-1)
    bad_frames = sample_3d("S001C001P001R001A004")
    bad_frames["total_frames"] = 99
    bad_dtype = sample_3d("S001C001P001R001A005")
    bad_dtype["keypoint"] = bad_dtype["keypoint"].astype(np.int32)
    nan = sample_3d("S001C001P001R001A006")
    nan["keypoint"][0, 3, 4, 1] = np.nan
    no_key = sample_3d("S001C001P001R001A007")
    del no_key["keypoint"]
    message = problems_of(dataset([sample_3d("S001C001P001R001A001"), bad_label, bad_frames, bad_dtype, nan, no_key]))
    assert "ann.pkl" in message and "5 problem(s)" in message
    assert "S001C001P001R001A003: label must be a non-negative integer, got -1" in message
    assert "S001C001P001R001A004: keypoint has 12 frames but total_frames is 99" in message
    assert "S001C001P001R001A005: keypoint dtype must be floating, got int32" in message
    assert "S001C001P001R001A006: keypoint contains NaN or inf" in message
    assert "S001C001P001R001A007: missing key(s) keypoint" in message


def test_2d_problems():
    no_score = sample_2d("S001C001P001R001A002")
    del no_score["keypoint_score"]
    bad_score = sample_2d("S001C001P001R001A003")
    bad_score["keypoint_score"] = bad_score["keypoint_score"][:, :-1]
    bad_shape = sample_2d("S001C001P001R001A004")
    bad_shape["img_shape"] = (1080,)
    message = problems_of(dataset([sample_2d("S001C001P001R001A001"), no_score, bad_score, bad_shape]))
    assert "S001C001P001R001A002: 2D keypoint (C=2) without keypoint_score" in message
    assert "S001C001P001R001A003: keypoint_score shape (1, 8, 17) != keypoint (M, T, V) (1, 9, 17)" in message
    assert "S001C001P001R001A004: img_shape must be (height, width)" in message


def test_mixed_formats_and_duplicates_are_reported():
    samples = [sample_3d("S001C001P001R001A001"), sample_3d("S001C001P001R001A002"),
               sample_2d("S001C001P001R001A003"), sample_3d("S001C001P001R001A001")]
    message = problems_of(dataset(samples))
    assert "S001C001P001R001A003: 2D with V=17 joints, but most samples are 3D with V=25" in message
    assert "S001C001P001R001A001: frame_dir appears 2 times in annotations" in message


def test_report_is_capped():
    samples = [sample_3d(f"S001C001P001R001A{i:03d}", label=-1) for i in range(1, 51)]
    message = problems_of(dataset(samples))
    assert f"... and {50 - MAX_REPORTED} more problem(s)" in message
    assert message.count("label must be") == MAX_REPORTED


def test_split_members_must_exist():
    samples = [sample_3d("S001C001P001R001A001"), sample_3d("S001C001P001R001A002")]
    message = problems_of(dataset(samples, {"xsub_train": ["S001C001P001R001A001", "S009C001P001R001A001"]}))
    assert "S009C001P001R001A001: listed in split 'xsub_train' but has no annotation" in message


def test_top_level_structure_errors():
    with pytest.raises(ValueError, match="missing top-level key.*split"):
        validate_annotations({"annotations": [sample_3d("a")]}, source="x.pkl")
    with pytest.raises(ValueError, match="'split' must be a non-empty dict"):
        validate_annotations({"split": {}, "annotations": [sample_3d("a")]}, source="x.pkl")
    with pytest.raises(ValueError, match="'annotations' must be a non-empty list"):
        validate_annotations({"split": {"a": []}, "annotations": []}, source="x.pkl")


def test_label_range_from_split_names_or_argument():
    ntu60 = dataset([sample_3d("S001C001P001R001A001", label=59), sample_3d("S001C001P001R001A002", label=60)],
                    {"xview_train": ["S001C001P001R001A001"], "xview_val": ["S001C001P001R001A002"]})
    assert "S001C001P001R001A002: label 60 out of range for 60 classes" in problems_of(ntu60)
    ok = dataset([sample_3d("S001C001P001R001A001", label=59), sample_3d("S001C001P001R001A002", label=60)])
    validate_annotations(ok)  # xsub names alone imply no class count
    assert "label 60 out of range for 10 classes" in problems_of(ok, num_classes=10)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        load_annotations(tmp_path / "missing.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"junk.pkl: not an annotation pickle \(UnpicklingError"):
        load_annotations(junk)


def test_cli_summary_copy_and_error(tmp_path, capsys):
    data = dataset([sample_3d("S001C001P001R001A001"), sample_3d("S001C001P001R001A002", label=4, persons=1)])
    src, out = tmp_path / "ann.pkl", tmp_path / "copy" / "ann.pkl"
    src.write_bytes(pickle.dumps(data))
    assert cli_main(["import-pyskl", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "samples: 2, keypoints 3D (x, y, z), V=25" in printed
    assert "splits: xsub_train 1, xsub_val 1" in printed
    copy = load_annotations(out)
    np.testing.assert_array_equal(copy["annotations"][1]["keypoint"], data["annotations"][1]["keypoint"])

    data["annotations"][1]["label"] = "four"
    src.write_bytes(pickle.dumps(data))
    assert cli_main(["import-pyskl", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msg3d import-pyskl: error:")
    assert "S001C001P001R001A002: label must be a non-negative integer, got 'four'" in err


def test_torch_free_modules():
    code = ("import sys, msg3d.data.pyskl_io, msg3d.data.store, msg3d.data.derive, msg3d.data.sampling; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


class Payload:
    """Unpickles by running ``os.system(command)``: what a hostile pickle from elsewhere does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_hostile_annotation_pickle_is_refused_by_every_reader(tmp_path, capsys):
    marker = tmp_path / "MARK"
    path = tmp_path / "ann.pkl"
    path.write_bytes(pickle.dumps(Payload(f"touch '{marker}'"), protocol=2))
    refused = (f"{path}: refused to load: it asks for posix.system, which an annotation pickle never holds "
               "(a pickle from elsewhere can run code)")
    with pytest.raises(ValueError) as info:
        load_annotations(path)
    assert str(info.value) == refused
    for argv in (["import-pyskl", str(path), "--out", str(tmp_path / "copy.pkl")],
                 ["derive", str(path), str(tmp_path / "store"), "--layout", "nturgb+d", "--modality", "j"],
                 ["fuse", "--scores", f"j={tmp_path / 'result.pkl'}", "--ann", str(path), "--split", "xsub_val",
                  "--out", str(tmp_path / "fused.json")]):
        assert cli_main(argv) == 2
        assert capsys.readouterr().err == f"msg3d {argv[0]}: error: {refused}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.pkl"]  # no marker, no copy, no store, no JSON


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pyskl_pickles_of_every_protocol_load(tmp_path, protocol):
    """mmcv.dump (PYSKL's tools) writes protocol 2; ours write the highest."""
    data = dataset([sample_3d("S001C001P001R001A001"), sample_3d("S001C001P001R001A002", label=1, dtype=np.float32)])
    data["annotations"][0]["label"] = np.int64(0)  # numpy scalars, as a script that reads labels from arrays writes
    path = tmp_path / "ann.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_annotations(path)
    assert loaded["split"] == data["split"]
    for got, want in zip(loaded["annotations"], data["annotations"]):
        assert got["keypoint"].dtype == want["keypoint"].dtype
        np.testing.assert_array_equal(got["keypoint"], want["keypoint"])
        assert got["label"] == want["label"]


def ntu120_style():
    """NTU120-style samples: actions 1 and 2 (NTU60's part), 61 and 120 (NTU120 only), xsub + xset splits."""
    names = ["S001C001P001R001A001", "S002C001P003R001A002", "S018C001P001R001A061", "S019C001P003R001A120"]
    samples = [sample_3d(n, label=int(n[-3:]) - 1) for n in names]
    return dataset(samples, {"xsub_train": names[::2], "xsub_val": names[1::2],
                             "xset_train": names[1::2], "xset_val": names[::2]})


def test_declared_release_bounds_labels_and_split_names(tmp_path, capsys):
    data = ntu120_style()
    validate_annotations(data, source="ann.pkl", dataset="ntu120")
    with pytest.raises(ValueError) as info:
        validate_annotations(data, source="ann.pkl", dataset="ntu60")
    assert str(info.value) == ("ann.pkl: declared ntu60, but S018C001P001R001A061 has label 60 (action 61) "
                               "(and 1 more sample(s) with labels >= 60); ntu60 labels are < 60")
    # NTU60's labels under NTU120's split names
    data["annotations"] = [a for a in data["annotations"] if a["label"] < 60]
    data["split"] = {name: [m for m in members if int(m[-3:]) <= 60] for name, members in data["split"].items()}
    with pytest.raises(ValueError, match=r"ann.pkl: declared ntu60, but it has split\(s\) 'xset_train', 'xset_val'; "
                                         r"ntu60 splits are xsub_train, xsub_val, xview_train, xview_val"):
        validate_annotations(data, source="ann.pkl", dataset="ntu60")
    with pytest.raises(ValueError, match="unknown NTU release 'ntu99'"):
        validate_annotations(data, source="ann.pkl", dataset="ntu99")

    path, out = tmp_path / "ann.pkl", tmp_path / "copy.pkl"
    path.write_bytes(pickle.dumps(ntu120_style()))
    assert cli_main(["import-pyskl", str(path), "--dataset", "ntu60", "--out", str(out)]) == 2
    assert "declared ntu60, but S018C001P001R001A061 has label 60 (action 61)" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main(["import-pyskl", str(path), "--dataset", "ntu120", "--out", str(out)]) == 0
    assert out.exists()
    with pytest.raises(ValueError, match="declared ntu60"):
        load_annotations(path, dataset="ntu60")


def test_sample_on_both_sides_of_a_split_pair_is_refused_at_import(tmp_path, capsys):
    names = [f"S001C001P00{i}R001A001" for i in range(1, 6)]
    data = dataset([sample_3d(n) for n in names],
                   {"xsub_train": names[:3], "xsub_val": names[2:], "xview_train": names[1:], "xview_val": names[:1]})
    leak = (f"split 'xsub_train': 1 sample(s) are in both 'xsub_train' and 'xsub_val' (trained on and tested on, "
            f"inflating every number): {names[2]}")
    message = problems_of(data, disjoint_splits=True)
    assert "1 problem(s)" in message and leak in message
    assert leak in problems_of(data, dataset="ntu60")  # a declared release never overlaps
    validate_annotations(data)  # a toy file may train on its val samples: derive takes it
    path = tmp_path / "leak.pkl"
    path.write_bytes(pickle.dumps(data))
    assert cli_main(["import-pyskl", str(path), "--out", str(tmp_path / "copy.pkl")]) == 2
    assert leak in capsys.readouterr().err
    assert not (tmp_path / "copy.pkl").exists()
    # the same sample in the train side of one pair and the val side of another is fine (xsub vs xview)
    data["split"]["xsub_train"] = names[:2]
    validate_annotations(data, disjoint_splits=True)


def packed_2d(frame_dir, label=0, img_shape=True, dtype=np.float32):
    """HRNet 2D keypoints with the score as channel 3 and no keypoint_score, as PYSKL also reads them."""
    split = sample_2d(frame_dir, label)
    kp = np.concatenate([split["keypoint"], split["keypoint_score"][..., None]], axis=-1).astype(dtype)
    packed = {k: v for k, v in split.items() if k not in ("keypoint_score", "img_shape", "original_shape")}
    packed["keypoint"] = kp
    if img_shape:
        packed["img_shape"] = (1080, 1920)
    return packed


def test_packed_score_channel_is_split_as_pyskl_reads_it(tmp_path, capsys):
    from msg3d.data.derive import derive_annotations
    from msg3d.data.store import open_store

    names = ["S001C001P001R001A001", "S001C001P002R001A002"]
    # the first sample says it is 2D by img_shape, the second by its 17 joints (COCO's)
    packed = dataset([packed_2d(names[0]), packed_2d(names[1], label=1, img_shape=False)])
    path = tmp_path / "packed.pkl"
    path.write_bytes(pickle.dumps(packed))
    assert cli_main(["import-pyskl", str(path), "--out", str(tmp_path / "copy.pkl")]) == 0
    printed = capsys.readouterr().out
    assert "samples: 2, keypoints 2D (x, y + keypoint_score), V=17" in printed
    assert ("note: 2 sample(s) hold 2D keypoints with the score packed as channel 3 (M, T, V, 3) and no "
            "keypoint_score, as PYSKL's PreNormalize2D reads them: split into keypoint (x, y) and keypoint_score "
            f"(first: {names[0]})") in printed
    loaded = load_annotations(tmp_path / "copy.pkl")
    for got, raw in zip(loaded["annotations"], packed["annotations"]):
        np.testing.assert_array_equal(got["keypoint"], raw["keypoint"][..., :2])
        np.testing.assert_array_equal(got["keypoint_score"], raw["keypoint_score"] if "keypoint_score" in raw
                                      else raw["keypoint"][..., 2])

    # derived from the packed file, the store equals the one derived from the same data in split form
    split_form = dataset([sample_2d(names[0]), sample_2d(names[1], label=1)])
    for sample in split_form["annotations"]:
        sample["keypoint"] = sample["keypoint"].astype(np.float32)
        sample["keypoint_score"] = sample["keypoint_score"].astype(np.float32)
    derive_annotations(split_form, tmp_path / "split_store", "coco", "j", progress=False)
    assert cli_main(["derive", str(path), str(tmp_path / "packed_store"), "--layout", "coco", "--modality", "j"]) == 0
    np.testing.assert_array_equal(open_store(tmp_path / "packed_store").data, open_store(tmp_path / "split_store").data)


def test_3d_keypoints_are_not_taken_for_packed_2d():
    data = dataset([sample_3d("S001C001P001R001A001"), sample_3d("S001C001P001R001A002", label=1)])
    assert validate_annotations(data) == []
    assert data["annotations"][0]["keypoint"].shape[-1] == 3 and "keypoint_score" not in data["annotations"][0]


def test_integer_pixel_keypoints_are_cast_to_float32(tmp_path, capsys):
    samples = [sample_2d("S001C001P001R001A001"), sample_2d("S001C001P001R001A002", label=1)]
    for sample in samples:
        sample["keypoint"] = np.rint(sample["keypoint"]).astype(np.int32)
    path = tmp_path / "int.pkl"
    path.write_bytes(pickle.dumps(dataset(samples)))
    assert cli_main(["import-pyskl", str(path), "--out", str(tmp_path / "copy.pkl")]) == 0
    printed = capsys.readouterr().out
    assert "dtype float32" in printed
    assert "note: 2 sample(s) hold integer pixel keypoints: cast to float32 (first: S001C001P001R001A001)" in printed
    copy = load_annotations(tmp_path / "copy.pkl")
    assert copy["annotations"][1]["keypoint"].dtype == np.float32
    np.testing.assert_array_equal(copy["annotations"][1]["keypoint"], samples[1]["keypoint"])
    # an invalid file is reported, and not converted half-way
    samples[1]["label"] = -1
    data = dataset(samples)
    with pytest.raises(ValueError, match="label must be a non-negative integer"):
        validate_annotations(data)
    assert data["annotations"][0]["keypoint"].dtype == np.int32


def test_split_samples_are_in_annotation_order():
    names = [f"S001C001P00{i}R001A00{i}" for i in range(1, 5)]
    data = dataset([sample_3d(n, label=i) for i, n in enumerate(names)],
                   {"xsub_train": names[:1], "xsub_val": [names[3], names[1], names[2]]})
    frame_dirs, labels = split_samples(data, "xsub_val", "ann.pkl")
    assert frame_dirs == names[1:] and labels.tolist() == [1, 2, 3] and labels.dtype == np.int64
    with pytest.raises(ValueError, match="ann.pkl: no split 'xview_val'; its splits are xsub_train, xsub_val"):
        split_samples(data, "xview_val", "ann.pkl")
