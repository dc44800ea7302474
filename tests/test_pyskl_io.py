"""Loading and validating PYSKL annotation pickles (`msg3d import-pyskl`)."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from msg3d.cli import main as cli_main
from msg3d.data.pyskl_io import MAX_REPORTED, load_annotations, validate_annotations


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
    with pytest.raises(ValueError, match="junk.pkl: not a readable pickle"):
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
