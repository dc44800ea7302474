"""PYSKL's K400 route: a table of contents + kpfiles decoded as PYSKL does (`import-pyskl --kpfiles`).

The synthetic TOC below follows PYSKL's format (tools/data/README.md); every expected array is
written out by hand from PYSKL's rules (PoseDataset's thresholding, DecompressPose's squeeze,
person slots and max_person ranking), see msg3d/data/pyskl_kpfiles.py.
"""

import gc
import pickle
import weakref
from pathlib import Path

import numpy as np
import pytest

from msg3d import safe_pickle
from msg3d.cli import main as cli_main
from msg3d.data import pyskl_kpfiles
from msg3d.data.derive import derive_annotations
from msg3d.data.pyskl_io import load_annotations, validate_annotations
from msg3d.data.pyskl_kpfiles import decompress_pose, import_kpfiles
from msg3d.data.store import open_store

V = 17
IMG_SHAPE = (240, 320)


def skel(x0, y0, score):
    """One skeleton (V, 3): x = x0 + joint index, y = y0, the same score on every joint."""
    out = np.zeros((V, 3), dtype=np.float32)
    out[:, 0] = x0 + np.arange(V)
    out[:, 1] = y0
    out[:, 2] = score
    return out


# per video: (x0, y0, score) of each skeleton, in kpfile order
V1 = [(10, 20, 0.5), (30, 40, 0.875), (50, 60, 0.75), (70, 80, 0.5), (90, 100, 0.125)]
V2 = [(1000.3, 120, 0.5), (130, 140, 0.5)]  # 1000.3 is not a float16: DecompressPose stores 1000.5
V3 = [(150, 10, 0.25), (170, 10, 0.75), (190, 10, 0.5), (210, 10, 0.5), (230, 10, 0.5)]


def k400(kp_dir_name="kpfiles"):
    """(toc, {kpfile name: kpfile}) in PYSKL's K400 format."""
    def entry(frame_dir, label, total, raw, frame_inds, box_score, valid):
        return {"frame_dir": frame_dir, "label": label, "total_frames": total, "img_shape": IMG_SHAPE,
                "original_shape": IMG_SHAPE, "raw_file": f"/mnt/author/k400/{kp_dir_name}/{raw}",
                "frame_inds": np.array(frame_inds, dtype=np.int64), "box_score": np.array(box_score, dtype=np.float32),
                "valid": dict(zip((0.5, 0.6, 0.7, 0.8, 0.9), valid))}

    toc = {
        "split": {"train": ["v1", "v4"], "val": ["v2", "v3", "ghost"]},
        "annotations": [
            entry("v1", 3, 6, "part_0.pkl", [0, 0, 2, 2, 5], [0.9, 0.3, 0.8, 0.6, 0.4], [2, 2, 2, 2, 1]),
            entry("v2", 7, 4, "part_0.pkl", [1, 3], [0.2, 0.2], [0, 0, 0, 0, 0]),
            entry("v3", 1, 8, "part_1.pkl", [4, 4, 4, 7, 7], [0.9] * 5, [2, 2, 2, 2, 2]),
            entry("v4", 2, 10, "part_1.pkl", [], [], [0, 0, 0, 0, 0]),
            entry("v5", 0, 3, "part_9.pkl", [0], [0.9], [1, 1, 1, 1, 1]),  # in no split; its kpfile is absent
        ],
    }
    kpfiles = {
        "part_0.pkl": {"v1": {"keypoint": np.stack([skel(*s) for s in V1])},
                       "v2": {"keypoint": np.stack([skel(*s) for s in V2])},
                       "other": {"keypoint": np.stack([skel(1, 1, 1.0)])}},
        "part_1.pkl": {"v3": {"keypoint": np.stack([skel(*s) for s in V3])},
                       "v4": {"keypoint": np.zeros((0, V, 3), dtype=np.float32)}},
    }
    return toc, kpfiles


def write(tmp_path, toc, kpfiles):
    kp_dir = tmp_path / "kpfiles"
    kp_dir.mkdir(exist_ok=True)
    for name, content in kpfiles.items():
        (kp_dir / name).write_bytes(pickle.dumps(content))
    toc_path = tmp_path / "k400_hrnet.pkl"
    toc_path.write_bytes(pickle.dumps(toc))
    return toc_path, kp_dir


def expected(persons):
    """(keypoint, keypoint_score) from a table person -> frame -> skeleton (x0, y0, score) or None."""
    num_frames = len(persons[0])
    kp = np.zeros((len(persons), num_frames, V, 2), dtype=np.float32)
    score = np.zeros((len(persons), num_frames, V), dtype=np.float32)
    for m, frames in enumerate(persons):
        for t, s in enumerate(frames):
            if s is not None:
                x0, y0, sc = s
                kp[m, t, :, 0] = np.float16(x0 + np.arange(V))  # DecompressPose's float16
                kp[m, t, :, 1] = y0
                score[m, t] = sc
    return kp, score


def check(ann, persons):
    kp, score = expected(persons)
    assert ann["keypoint"].dtype == np.float32 and ann["keypoint_score"].dtype == np.float32
    np.testing.assert_array_equal(ann["keypoint"], kp)
    np.testing.assert_array_equal(ann["keypoint_score"], score)
    assert ann["total_frames"] == kp.shape[1]


def by_frame_dir(data):
    return {a["frame_dir"]: a for a in data["annotations"]}


def test_k400_defaults_keep_every_skeleton_and_squeeze(tmp_path):
    data, summary = import_kpfiles(*write(tmp_path, *k400()))
    anns = by_frame_dir(data)
    assert [a["frame_dir"] for a in data["annotations"]] == ["v1", "v2", "v3"]  # TOC order
    assert data["split"] == {"train": ["v1"], "val": ["v2", "v3"]}
    # v1: frames 0, 2, 5 -> T = 3; two skeletons in frames 0 and 2 -> M = 2; kpfile order in each frame
    check(anns["v1"], [[V1[0], V1[2], V1[4]], [V1[1], V1[3], None]])
    # v2: no box threshold at all with valid_ratio 0.0 (box scores 0.2 kept)
    check(anns["v2"], [[V2[0], V2[1]]])
    assert anns["v2"]["keypoint"][0, 0, 0, 0] == 1000.5
    # v3: three persons in frame 4 (M = 3 <= 10: no ranking)
    check(anns["v3"], [[V3[0], V3[3]], [V3[1], V3[4]], [V3[2], None]])
    assert anns["v1"]["label"] == 3 and anns["v1"]["img_shape"] == IMG_SHAPE
    assert anns["v1"]["original_shape"] == IMG_SHAPE
    assert summary["no_skeleton"] == ["v4"] and summary["no_split"] == ["v5"]
    assert summary["below_valid_ratio"] == [] and summary["over_max_person"] == []
    assert summary["unknown_split_entries"] == 1 and summary["kpfiles"] == 2 and summary["decoded"] == 3
    assert not summary["thresholded"]
    assert validate_annotations(data, source="k400", disjoint_splits=True) == []


def test_valid_ratio_applies_box_threshold_to_training_splits_only(tmp_path):
    paths = write(tmp_path, *k400())
    data, summary = import_kpfiles(*paths, box_thr=0.5, valid_ratio=0.3)
    anns = by_frame_dir(data)
    # v1 (train): valid[0.5] / total = 2 / 6 >= 0.3; box >= 0.5 keeps skeletons 0, 2, 3 -> frames 0, 2
    check(anns["v1"], [[V1[0], V1[2]], [None, V1[3]]])
    # v2 (val): untouched although its box scores are 0.2
    check(anns["v2"], [[V2[0], V2[1]]])
    assert summary["below_valid_ratio"] == ["v4"] and summary["thresholded"]
    assert data["split"]["train"] == ["v1"]

    data, summary = import_kpfiles(*paths, box_thr=0.7, valid_ratio=0.3)
    check(by_frame_dir(data)["v1"], [[V1[0], V1[2]]])  # box >= 0.7: skeletons 0 and 2
    data, summary = import_kpfiles(*paths, box_thr=0.5, valid_ratio=0.5)
    assert summary["below_valid_ratio"] == ["v1", "v4"] and data["split"]["train"] == []
    assert any("2 video(s) with valid[0.5] / total_frames < 0.5 left out (v1, v4)" in n for n in summary["notes"])


def test_max_person_ranks_persons_by_summed_score_per_frame(tmp_path):
    paths = write(tmp_path, *k400())
    data, summary = import_kpfiles(*paths, max_person=2)
    anns = by_frame_dir(data)
    # v3 frame 4: sums 17*0.25, 17*0.75, 17*0.5 -> skeletons 1, 2; frame 7: a tie -> kpfile order 3, 4
    check(anns["v3"], [[V3[1], V3[3]], [V3[2], V3[4]]])
    # v1 has M = 2 = max_person: not ranked, skeleton 0 (0.5) stays before skeleton 1 (0.875)
    check(anns["v1"], [[V1[0], V1[2], V1[4]], [V1[1], V1[3], None]])
    assert summary["over_max_person"] == ["v3"]

    data, summary = import_kpfiles(*paths, max_person=1)
    # v1 ranked now: frame 0 -> skeleton 1 (0.875), frame 2 -> skeleton 2 (0.75), frame 5 -> skeleton 4
    check(by_frame_dir(data)["v1"], [[V1[1], V1[2], V1[4]]])
    assert summary["over_max_person"] == ["v1", "v3"]


def test_decompress_pose_by_hand():
    keypoint = np.stack([skel(1, 2, 0.5), skel(3, 4, 0.25), skel(5, 6, 1.0)])
    kp, score, persons = decompress_pose(keypoint, np.array([7, 9, 9]))
    want_kp, want_score = expected([[(1, 2, 0.5), (3, 4, 0.25)], [None, (5, 6, 1.0)]])
    np.testing.assert_array_equal(kp, want_kp)
    np.testing.assert_array_equal(score, want_score)
    assert persons == 2
    kp, _, persons = decompress_pose(keypoint, np.array([7, 9, 9]), keep=np.array([False, True, True]))
    np.testing.assert_array_equal(kp, expected([[(3, 4, 0.25)], [(5, 6, 1.0)]])[0])
    with pytest.raises(ValueError, match="no skeleton to decode"):
        decompress_pose(keypoint, np.array([7, 9, 9]), keep=np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="frame_inds decrease from 9 to 7 at kept skeleton index 2;"):
        decompress_pose(keypoint, np.array([7, 9, 7]))


def test_each_kpfile_is_read_once_and_released_before_the_next(tmp_path, monkeypatch):
    toc_path, kp_dir = write(tmp_path, *k400())
    real_load, loads, held = safe_pickle.load, [], []

    class Kpfile(dict):  # a dict that a weak reference can follow
        pass

    def load(path, what):
        obj = real_load(path, what)
        if Path(path).parent != kp_dir:
            return obj
        gc.collect()
        assert all(ref() is None for ref in held), "the previous kpfile is still held"
        loads.append(Path(path).name)
        obj = Kpfile(obj)
        held.append(weakref.ref(obj))
        return obj

    monkeypatch.setattr(pyskl_kpfiles.safe_pickle, "load", load)
    data, _ = import_kpfiles(toc_path, kp_dir)
    assert loads == ["part_0.pkl", "part_1.pkl"]  # v1 and v2 share part_0; part_9 (v5, no split) unread
    assert len(data["annotations"]) == 3


def error_of(tmp_path, toc, kpfiles, **kwargs):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        import_kpfiles(*write(tmp_path, toc, kpfiles), **kwargs)
    return str(info.value)


def test_missing_kpfile(tmp_path):
    toc, kpfiles = k400()
    del kpfiles["part_1.pkl"]
    message = error_of(tmp_path, toc, kpfiles)
    assert message == (f"{tmp_path / 'kpfiles' / 'part_1.pkl'}: kpfile not found, named by raw_file "
                       f"'/mnt/author/k400/kpfiles/part_1.pkl' of v3 (and 1 more sample(s)) in "
                       f"{tmp_path / 'k400_hrnet.pkl'}")


def test_frame_dir_missing_from_its_kpfile(tmp_path):
    toc, kpfiles = k400()
    del kpfiles["part_0.pkl"]["v2"]
    message = error_of(tmp_path, toc, kpfiles)
    assert message.startswith(f"{tmp_path / 'kpfiles' / 'part_0.pkl'}: v2: frame_dir missing from this kpfile "
                              "(2 entries)")
    assert str(tmp_path / "k400_hrnet.pkl") in message


@pytest.mark.parametrize("key", ["frame_inds", "box_score"])
def test_lengths_must_match_the_kpfile_skeleton_count(tmp_path, key):
    toc, kpfiles = k400()
    toc["annotations"][0][key] = toc["annotations"][0][key][:4]
    message = error_of(tmp_path, toc, kpfiles)
    assert message == (f"{tmp_path / 'k400_hrnet.pkl'}: v1: {key} has 4 entries but kpfile "
                       f"{tmp_path / 'kpfiles' / 'part_0.pkl'} holds 5 skeletons for it")


def test_nan_keypoint_and_box_score(tmp_path):
    toc, kpfiles = k400()
    kpfiles["part_1.pkl"]["v3"]["keypoint"][2, 5, 0] = np.nan
    assert error_of(tmp_path, toc, kpfiles) == f"{tmp_path / 'kpfiles' / 'part_1.pkl'}: v3: keypoint contains NaN or inf"
    toc, kpfiles = k400()
    toc["annotations"][1]["box_score"][1] = np.inf
    assert error_of(tmp_path, toc, kpfiles) == f"{tmp_path / 'k400_hrnet.pkl'}: v2: box_score contains NaN or inf"


def test_decreasing_frame_inds_missing_valid_and_split_overlap(tmp_path):
    toc, kpfiles = k400()
    toc["annotations"][2]["frame_inds"] = np.array([4, 4, 7, 4, 7])
    assert error_of(tmp_path, toc, kpfiles) == (
        f"{tmp_path / 'k400_hrnet.pkl'}: v3: frame_inds decrease from 7 to 4 at kept skeleton index 3; "
        "PYSKL's DecompressPose needs them non-decreasing")
    toc, kpfiles = k400()
    del toc["annotations"][0]["valid"][0.6]
    assert error_of(tmp_path, toc, kpfiles, box_thr=0.6, valid_ratio=0.1) == (
        f"{tmp_path / 'k400_hrnet.pkl'}: v1: needs valid[0.6] for --valid-ratio 0.1 (found: 0.5, 0.7, 0.8, 0.9)")
    toc, kpfiles = k400()
    toc["split"]["val"].append("v1")
    assert "v1: in a training split and in another split (split 'val')" in error_of(tmp_path, toc, kpfiles)
    toc, kpfiles = k400()
    toc["annotations"][1]["frame_dir"] = "v1"
    assert "v1: frame_dir appears more than once" in error_of(tmp_path, toc, kpfiles)


def test_cli_end_to_end_gives_a_pickle_that_derive_takes(tmp_path, capsys):
    toc_path, kp_dir = write(tmp_path, *k400())
    out = tmp_path / "k400_2d.pkl"
    assert cli_main(["import-pyskl", str(toc_path), "--kpfiles", str(kp_dir), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{toc_path}: OK" in captured.out and f"wrote {out}" in captured.out
    assert "note: decoded 3 sample(s) from 2 kpfile(s)" in captured.out
    assert "note: 1 sample(s) without any skeleton left out" in captured.out
    assert "import-pyskl: kpfile 2/2 (part_1.pkl), 3/4 samples decoded" in captured.err

    data = load_annotations(out)
    check(by_frame_dir(data)["v1"], [[V1[0], V1[2], V1[4]], [V1[1], V1[3], None]])
    store = open_store(derive_annotations(data, tmp_path / "store", "coco", "j", progress=False))
    sample = store.read_sample(0)  # v1: PreNormalize2D with img_shape (240, 320)
    assert sample.shape == (2, 3, V, 3)
    np.testing.assert_allclose(sample[0, 0, 0], [(10 - 160) / 160, (20 - 120) / 120, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(sample[1, 2], 0)

    assert cli_main(["import-pyskl", str(toc_path), "--kpfiles", str(kp_dir), "--valid-ratio", "0.3",
                     "--box-thr", "0.7", "--max-person", "1", "--out", str(out)]) == 0
    assert "skeletons with box_score >= 0.7 kept" in capsys.readouterr().out
    check(by_frame_dir(load_annotations(out))["v1"], [[V1[0], V1[2]]])


def test_cli_refuses_mixed_options(tmp_path, capsys):
    toc_path, kp_dir = write(tmp_path, *k400())
    assert cli_main(["import-pyskl", str(toc_path)]) == 2
    assert capsys.readouterr().err == (f"msg3d import-pyskl: error: {toc_path}: a PYSKL K400 table of contents "
                                       "(raw_file, frame_inds; the keypoints are in kpfiles): pass --kpfiles DIR\n")
    assert cli_main(["import-pyskl", str(toc_path), "--max-person", "2"]) == 2
    assert "--max-person only apply with --kpfiles" in capsys.readouterr().err
    assert cli_main(["import-pyskl", str(toc_path), "--kpfiles", str(kp_dir), "--dataset", "ntu60"]) == 2
    assert "--dataset ntu60 names an NTU release" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: PYSKL allows 0.5 ... 0.9 only
        cli_main(["import-pyskl", str(toc_path), "--kpfiles", str(kp_dir), "--box-thr", "0.55"])
    capsys.readouterr()
    assert cli_main(["import-pyskl", str(toc_path), "--kpfiles", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"msg3d import-pyskl: error: kpfiles folder not found: {tmp_path / 'nowhere'}\n"
