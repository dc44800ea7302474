"""Kinetics-skeleton conversion (msg3d.data.kinetics_raw) against MS-G3D's output and a port of its loop."""

import copy
import io
import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES, TEST_FIXTURES, shared_file

from msg3d import cli, safe_pickle
from msg3d.data import kinetics_raw
from msg3d.data.kinetics_raw import KineticsFormatError
from msg3d.data.pyskl_io import load_annotations

SMALL_REF = TEST_FIXTURES / "msg3d_kinetics_small_ref.npz"


# ---------------------------------------------------------------------------------------------
# helpers


def skeleton(rng, undetected=0.2, score=None):
    """A random OpenPose-18 skeleton as the release writes it (3 decimals, undetected joints 0)."""
    pose = np.round(rng.uniform(0, 1, 36), 3)
    scores = np.round(rng.uniform(0.05, 1, 18), 3) if score is None else np.full(18, score)
    gone = rng.random(18) < undetected
    scores[gone] = 0
    pose.reshape(18, 2)[gone] = 0
    return {"pose": pose.tolist(), "score": scores.tolist()}


def clip_text(frames, label_index=2):
    """``frames``: list of (frame_index, [skeleton, ...])."""
    clip = {"data": [{"frame_index": i, "skeleton": sks} for i, sks in frames], "label": "some action"}
    if label_index is not None:
        clip["label_index"] = label_index
    return json.dumps(clip)


def random_clip(seed, label_index=2):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(1, int(rng.integers(2, 40))):
        if rng.random() < 0.1:
            continue  # a frame missing from data
        frames.append((i, [skeleton(rng) for _ in range(int(rng.integers(0, 4)))]))
    return clip_text(frames, label_index)


def write_release(root, parts, labels=None):
    """``parts``: part -> {video id: clip text or None (no file)}; labels: part -> {id: entry} overrides."""
    for part, clips in parts.items():
        folder = root / f"kinetics_{part}"
        folder.mkdir(parents=True, exist_ok=True)
        entries = {}
        for vid, text in clips.items():
            label = json.loads(text).get("label_index", 0) if text else 0
            entries[vid] = {"has_skeleton": True, "label": "some action", "label_index": label}
            if text is not None:
                (folder / f"{vid}.json").write_text(text)
        entries.update((labels or {}).get(part, {}))
        (root / f"kinetics_{part}_label.json").write_text(json.dumps(entries))
    return root


def small_release(tmp_path, entries=None):
    """The committed reference release in ``tmp_path/raw``; returns (root, npz)."""
    ref = np.load(SMALL_REF)  # committed: present in every clone
    files = json.loads(ref["files_json"].tobytes().decode("utf-8"))
    for rel, text in (entries or files).items():
        path = tmp_path / "raw" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "raw", ref


def read_tsv(path):
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert rows[0] == ["file", "reason", "detail"]
    return rows[1:]


def msg3d_gendata_port(clip):
    """MS-G3D's per-clip loop (kinetics_gendata.py via its feeder), step by step, for cross-checks."""
    data = np.zeros((3, 300, 18, 5))
    for frame_info in clip["data"]:
        frame_index = frame_info["frame_index"]
        for m, skeleton_info in enumerate(frame_info["skeleton"]):
            if m >= 5:
                break
            pose, score = skeleton_info["pose"], skeleton_info["score"]
            data[0, frame_index, :, m] = pose[0::2]
            data[1, frame_index, :, m] = pose[1::2]
            data[2, frame_index, :, m] = score
    data[0:2] = data[0:2] - 0.5
    data[1:2] = -data[1:2]
    data[0][data[2] == 0] = 0
    data[1][data[2] == 0] = 0
    sort_index = (-data[2, :, :, :].sum(axis=1)).argsort(axis=1, kind="stable")
    for t, s in enumerate(sort_index):
        data[:, t, :, :] = data[:, t, :, s].transpose((1, 2, 0))
    return data[:, :, :, 0:2].astype(np.float32)


def as_joint(ann):
    """An annotation's (keypoint, keypoint_score) as MS-G3D's (C=3, T, V, M) array."""
    return np.concatenate([ann["keypoint"].transpose(3, 1, 2, 0), ann["keypoint_score"].transpose(1, 2, 0)[None]])


# ---------------------------------------------------------------------------------------------
# parity with MS-G3D's conversion


def check_parity(out, ref_ids, ref_parts, ref_labels, ref_joint):
    data = load_annotations(out)  # the restricted loader and validate_annotations accept it
    assert pickle.loads(out.read_bytes()).keys() == data.keys() == {"annotations", "split", "num_classes"}
    got = data["annotations"]
    assert [a["frame_dir"] for a in got] == list(ref_ids)
    assert [a["label"] for a in got] == list(ref_labels)
    assert data["split"] == {part: [i for i, p in zip(ref_ids, ref_parts) if p == part] for part in ("train", "val")}
    for ann, joint in zip(got, ref_joint):
        assert ann["keypoint"].dtype == ann["keypoint_score"].dtype == np.float32
        assert ann["keypoint"].shape == (2, 300, 18, 2) and ann["keypoint_score"].shape == (2, 300, 18)
        assert ann["total_frames"] == 300
        assert np.abs(as_joint(ann) - joint).max() == 0, ann["frame_dir"]
    return data


def test_small_reference_release(tmp_path):
    raw, ref = small_release(tmp_path)
    out = tmp_path / "out" / "k400.pkl"
    summary = kinetics_raw.convert_kinetics(raw, out, jobs=1)
    data = check_parity(out, ref["ids"], ref["parts"], ref["labels"], ref["joint"])
    assert data["num_classes"] == 5
    assert summary["converted"] == {"train": 5, "val": 4}
    assert summary["no_skeleton"] == 1 and summary["skipped"] == {}  # -Kt0007xxxx: has_skeleton false
    assert read_tsv(out.parent / "skipped.tsv") == []
    frames = {a["frame_dir"]: a["clip_frames"] for a in data["annotations"]}
    assert frames["-Kt0003xxxx"] == 56 and frames["-Kt0004xxxx"] == 222 and frames["-Kv0003xxxx"] == 30
    assert frames["-Kt0002xxxx"] == 96  # all frames empty: still 1 + the largest frame_index
    empty = {a["frame_dir"]: a for a in data["annotations"]}["-Kt0002xxxx"]
    assert not empty["keypoint"].any() and not empty["keypoint_score"].any()


def test_shared_reference_release(tmp_path):
    torch = pytest.importorskip("torch")
    ref = torch.load(shared_file(FIXTURES / "msg3d_kinetics_ref.pt"), weights_only=True)
    raw, _ = small_release(tmp_path, ref["files"])
    out = tmp_path / "out" / "k400.pkl"
    kinetics_raw.convert_kinetics(raw, out, jobs=2)
    reference = ref["reference"]
    ids = sorted(reference)
    check_parity(out, ids, [reference[i]["part"] for i in ids], [reference[i]["label"] for i in ids],
                 [reference[i]["joint"].numpy() for i in ids])


def test_random_clips_match_a_port_of_msg3d(tmp_path):
    rng = np.random.default_rng(0)
    for n in range(40):
        frames = []
        indices = rng.choice(300, size=int(rng.integers(0, 25)), replace=True)  # repeats: listed twice
        for i in indices.tolist():
            people = [skeleton(rng, undetected=rng.uniform(0, 1)) for _ in range(int(rng.integers(0, 9)))]
            if len(people) > 2 and rng.random() < 0.5:
                people[2] = copy.deepcopy(people[0])  # a tie in the summed score
            if len(people) > 1 and rng.random() < 0.3:
                people[1] = skeleton(rng, undetected=0, score=0.5)  # ties between different people
                people.insert(0, skeleton(rng, undetected=0, score=0.5))
            frames.append((i, people))
        path = tmp_path / f"clip{n}.json"
        path.write_text(clip_text(frames))
        ann = kinetics_raw.read_clip(path)
        expected = msg3d_gendata_port(json.loads(path.read_text()))
        np.testing.assert_array_equal(as_joint(ann), expected)
        assert ann["clip_frames"] == (1 + max(indices) if len(indices) else 0)


def test_read_clip_by_hand(tmp_path):
    def person(x, y, s):
        return {"pose": [x, y] * 18, "score": [s] * 18}

    low, high = person(0.2, 0.9, 0.3), person(0.75, 0.25, 0.6)
    high["score"][3] = 0  # undetected joint: x, y become 0
    frames = [(0, [low, high]), (7, [person(0.5, 0.5, 0.4), person(0.1, 0.1, 0.4)]), (9, [])]
    path = tmp_path / "-abc_DEF-12.json"
    path.write_text(clip_text(frames, label_index=None))
    ann = kinetics_raw.read_clip(path)
    assert ann["frame_dir"] == "-abc_DEF-12" and ann["label"] is None
    assert ann["total_frames"] == 300 and ann["clip_frames"] == 10
    kp, score = ann["keypoint"], ann["keypoint_score"]
    # frame 0: the more confident person comes first; x - 0.5, -(y - 0.5)
    np.testing.assert_allclose(kp[0, 0, 0], [0.25, 0.25], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(kp[0, 0, 3], [0, 0])
    np.testing.assert_allclose(kp[1, 0, 0], [-0.3, -0.4], atol=1e-7)
    assert score[0, 0, 0] == np.float32(0.6) and score[0, 0, 3] == 0 and score[1, 0, 0] == np.float32(0.3)
    # frame 7: a tie keeps the file's order
    np.testing.assert_array_equal(kp[:, 7, 0, 0], [0, np.float32(0.1) - np.float32(0.5)])
    assert not kp[:, 1:7].any() and not kp[:, 8:].any() and not score[:, 8:].any()


def test_first_five_people_and_repeated_frames(tmp_path):
    rng = np.random.default_rng(3)
    people = [skeleton(rng, undetected=0, score=0.1 * (k + 1)) for k in range(7)]  # the 6th and 7th: most confident
    first, again = [skeleton(rng, undetected=0, score=0.9)], [skeleton(rng, undetected=0, score=0.2)]
    path = tmp_path / "a.json"
    path.write_text(clip_text([(4, people), (5, first + first), (5, again)]))
    ann = kinetics_raw.read_clip(path)
    scores = ann["keypoint_score"][:, :, 0]
    np.testing.assert_array_equal(scores[:, 4], np.float32([0.5, 0.4]))  # among the first 5 only
    # frame 5 listed twice: the second entry overwrites slot 0, slot 1 keeps the first entry's person
    np.testing.assert_array_equal(scores[:, 5], np.float32([0.9, 0.2]))


# ---------------------------------------------------------------------------------------------
# bad clips: one test per case, message naming the file and the frame


def base_clip():
    rng = np.random.default_rng(1)
    return {"data": [{"frame_index": 1, "skeleton": [skeleton(rng), skeleton(rng)]},
                     {"frame_index": 2, "skeleton": []},
                     {"frame_index": 3, "skeleton": [skeleton(rng)]}],
            "label": "some action", "label_index": 2}


def mutate(edit):
    def make():
        clip = base_clip()
        edit(clip)
        return json.dumps(clip)
    return make


def _set(path, value):
    def edit(clip):
        *head, last = path
        target = clip
        for key in head:
            target = target[key]
        target[last] = value
    return edit


FRAME3 = r"frame 3 \(data\[2\]\), skeleton 0: "
SK = ["data", 2, "skeleton", 0]  # the skeleton of frame 3


def _extra_people(clip):
    rng = np.random.default_rng(2)
    clip["data"][0]["skeleton"] += [skeleton(rng) for _ in range(3)] + [{"pose": [0.5] * 10, "score": [0.5] * 18}]


BAD_CLIPS = {
    "malformed JSON": (lambda: json.dumps(base_clip())[:-20], r"malformed JSON: .* \(line 1, column \d+\)"),
    "trailing garbage": (lambda: json.dumps(base_clip()) + " x", r"malformed JSON: Extra data"),
    "not UTF-8": (lambda: b'{"data": []}\xff'.decode("latin-1"), r"not UTF-8 text \(invalid start byte at byte 12\)"),
    "top level list": (lambda: "[]", r"expected a JSON object with a 'data' list, got a list"),
    "no data": (mutate(lambda c: c.pop("data")), r"'data' must be a list of frames, got none"),
    "data not a list": (mutate(_set(["data"], {})), r"'data' must be a list of frames, got an object"),
    "frame not an object": (mutate(_set(["data", 1], [])), r"data\[1\]: expected an object"),
    "no frame_index": (mutate(lambda c: c["data"][2].pop("frame_index")), r"data\[2\]: no frame_index"),
    "frame_index -1": (mutate(_set(["data", 0, "frame_index"], -1)),
                       r"frame -1 \(data\[0\]\): frame_index outside 0..299"),
    "frame_index 300": (mutate(_set(["data", 2, "frame_index"], 300)),
                        r"frame 300 \(data\[2\]\): frame_index outside"),
    "frame_index 3.0": (mutate(_set(["data", 2, "frame_index"], 3.0)),
                        r"data\[2\]: frame_index 3.0 is not an integer"),
    "frame_index text": (mutate(_set(["data", 2, "frame_index"], "3")),
                         r'data\[2\]: frame_index "3" is not an integer'),
    "frame_index bool": (mutate(_set(["data", 2, "frame_index"], True)),
                         r"data\[2\]: frame_index true is not an integer"),
    "skeleton not a list": (mutate(_set(["data", 1, "skeleton"], None)),
                            r"frame 2 \(data\[1\]\): 'skeleton' must be a list"),
    "skeleton not an object": (mutate(_set(SK, [])), FRAME3 + "expected an object"),
    "pose of 35": (mutate(lambda c: c["data"][2]["skeleton"][0]["pose"].pop()),
                   FRAME3 + r"pose must be a list of 36 numbers \(x, y of 18 joints\), got a list of 35"),
    "pose of 37": (mutate(lambda c: c["data"][2]["skeleton"][0]["pose"].append(0.5)),
                   FRAME3 + "pose .* got a list of 37"),
    "no pose": (mutate(lambda c: c["data"][2]["skeleton"][0].pop("pose")), FRAME3 + "pose must be .* got none"),
    "score of 17": (mutate(lambda c: c["data"][2]["skeleton"][0]["score"].pop()),
                    FRAME3 + "score must be a list of 18 numbers, got a list of 17"),
    "score a number": (mutate(_set(SK + ["score"], 0.5)), FRAME3 + "score must be .* got a number"),
    "pose text value": (mutate(_set(SK + ["pose", 5], "0.5")), FRAME3 + 'pose value "0.5" is not a number'),
    "score bool value": (mutate(_set(SK + ["score", 0], False)), FRAME3 + "score value false is not a number"),
    "pose null value": (mutate(_set(SK + ["pose", 0], None)), FRAME3 + "pose value null is not a number"),
    "pose NaN": (mutate(_set(["data", 0, "skeleton", 1, "pose", 3], float("nan"))),
                 r"frame 1 \(data\[0\]\), skeleton 1: pose holds a value that is not a finite number"),
    "score Infinity": (mutate(_set(SK + ["score", 1], float("-inf"))), FRAME3 + "score holds a value that is not"),
    "pose integer beyond float64": (mutate(_set(SK + ["pose", 0], 10**400)), FRAME3 + "pose holds a value"),
    # people after the 5th never enter the array, but a malformed one still makes the file malformed
    "bad 6th skeleton": (mutate(_extra_people), r"frame 1 \(data\[0\]\), skeleton 5: pose must be"),
    "label_index 400": (mutate(_set(["label_index"], 400)), r"label_index 400 is not an integer in 0..399"),
    "label_index -1": (mutate(_set(["label_index"], -1)), r"label_index -1 is not an integer in 0..399"),
    "label_index text": (mutate(_set(["label_index"], "2")), r'label_index "2" is not an integer'),
}


def _overflowing_pose():
    text = json.dumps(base_clip())
    start = text.index('"pose": [', text.index('"frame_index": 3')) + len('"pose": [')
    end = text.index(",", start)
    return text[:start] + "1e999" + text[end:]  # parses to inf


BAD_CLIPS["pose 1e999"] = (_overflowing_pose, FRAME3 + "pose holds a value that is not a finite number")


@pytest.mark.parametrize("case", sorted(BAD_CLIPS))
def test_bad_clip_names_file_and_frame(tmp_path, case):
    make, message = BAD_CLIPS[case]
    path = tmp_path / "clipXYZ.json"
    path.write_text(make(), encoding="latin-1" if case == "not UTF-8" else "utf-8")
    with pytest.raises(KineticsFormatError) as info:
        kinetics_raw.read_clip(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert re.search(message, text), text


def test_the_base_clip_is_fine(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(base_clip()))
    assert kinetics_raw.read_clip(path)["label"] == 2


# ---------------------------------------------------------------------------------------------
# a release: skipped vs strict, parts, jobs, progress, errors


def messy_release(root):
    """Good clips plus one of each release-level problem."""
    clips = {f"vid{i:02d}": random_clip(i, label_index=i % 3) for i in range(6)}
    clips["bad_pose"] = clip_text([(1, [{"pose": [0.5] * 35, "score": [0.5] * 18}])])
    clips["mismatch"] = random_clip(50, label_index=1)
    clips["no_file"] = None
    clips["in_both"] = random_clip(51)
    val = {"zval0": random_clip(60, label_index=7), "in_both": random_clip(52), "nolabel": random_clip(53)}
    labels = {
        "train": {"mismatch": {"has_skeleton": True, "label": "x", "label_index": 0},
                  "hidden": {"has_skeleton": False, "label": "x", "label_index": 9},
                  "bad_entry": {"has_skeleton": True, "label": "x", "label_index": 400}},
        "val": {"nolabel": None},
    }
    write_release(root, {"train": clips, "val": val}, labels)
    labels = json.loads((root / "kinetics_val_label.json").read_text())
    del labels["nolabel"]
    (root / "kinetics_val_label.json").write_text(json.dumps(labels))
    (root / "kinetics_train" / "hidden.json").write_text("not even JSON")  # has_skeleton false: never read
    (root / "kinetics_train" / "bad_entry.json").write_text(random_clip(54))
    (root / "kinetics_train" / "notes.txt").write_text("ignored")
    return root


def test_lenient_conversion_skips_and_lists(tmp_path):
    raw = messy_release(tmp_path / "raw")
    out = tmp_path / "out" / "k.pkl"
    log = io.StringIO()
    summary = kinetics_raw.convert_kinetics(raw, out, jobs=1, log=log)
    data = load_annotations(out)
    ids = [a["frame_dir"] for a in data["annotations"]]
    assert ids == [f"vid{i:02d}" for i in range(6)] + ["zval0"]
    assert data["split"] == {"train": ids[:6], "val": ["zval0"]}
    assert data["num_classes"] == 10  # 1 + the largest label_index of the label files (hidden: 9)
    assert [a["label"] for a in data["annotations"]] == [0, 1, 2, 0, 1, 2, 7]
    rows = read_tsv(out.parent / "skipped.tsv")
    assert [row[:2] for row in rows] == [
        ["kinetics_train/bad_entry.json", "bad-label-entry"],
        ["kinetics_train/bad_pose.json", "unreadable"],
        ["kinetics_train/in_both.json", "duplicate-id"],
        ["kinetics_train/mismatch.json", "label-mismatch"],
        ["kinetics_train/no_file.json", "no-file"],
        ["kinetics_val/in_both.json", "duplicate-id"],
        ["kinetics_val/nolabel.json", "not-in-label-file"],
    ]
    details = {row[0]: row[2] for row in rows}
    assert details["kinetics_train/bad_entry.json"] == (
        f'{raw / "kinetics_train_label.json"}: entry "bad_entry": label_index 400 is not an integer in 0..399 '
        "(Kinetics-400)")
    assert details["kinetics_train/bad_pose.json"].startswith(
        f"{raw / 'kinetics_train' / 'bad_pose.json'}: frame 1 (data[0]), skeleton 0: pose must be")
    assert details["kinetics_train/mismatch.json"] == (
        f"{raw / 'kinetics_train' / 'mismatch.json'}: has label_index 1, but {raw / 'kinetics_train_label.json'} "
        "gives 0")
    assert details["kinetics_val/nolabel.json"] == (
        f'{raw / "kinetics_val" / "nolabel.json"}: video id "nolabel" is not in {raw / "kinetics_val_label.json"}')
    assert "is in both kinetics_train and kinetics_val" in details["kinetics_val/in_both.json"]
    assert summary["skipped"] == {"bad-label-entry": 1, "duplicate-id": 2, "label-mismatch": 1, "no-file": 1,
                                  "not-in-label-file": 1, "unreadable": 1}
    assert summary["no_skeleton"] == 1 and summary["converted"] == {"train": 6, "val": 1}
    last = log.getvalue().splitlines()[-1]
    assert last == (f"convert-kinetics: wrote {out}: 7 clips (6 train, 1 val) of 10 classes in "
                    f"{summary['seconds']:.1f} s; skipped 7 (1 bad-label-entry, 2 duplicate-id, 1 label-mismatch, "
                    f"1 no-file, 1 not-in-label-file, 1 unreadable), listed in {out.parent / 'skipped.tsv'}; "
                    "left out 1 label entries with has_skeleton false")


STRICT_CASES = {
    "bad-label-entry": r'kinetics_train_label\.json: entry "bad_entry": label_index 400',
    "unreadable": r"kinetics_train/bad_pose\.json: frame 1 \(data\[0\]\), skeleton 0: pose must be",
    "label-mismatch": r"kinetics_train/mismatch\.json: has label_index 1, but .*kinetics_train_label\.json gives 0",
    "no-file": r"_label\.json: 1 entry with has_skeleton true but no file in .*kinetics_train \(no_file\)",
    "duplicate-id": r'kinetics_train/in_both\.json: video id "in_both" is in both',
    "not-in-label-file": r'kinetics_val/nolabel\.json: video id "nolabel" is not in .*kinetics_val_label\.json',
}
# removing the files of the earlier problems, in the order strict meets them
STRICT_FIXES = {
    "bad-label-entry": lambda raw: _drop(raw, "train", "bad_entry"),
    "no-file": lambda raw: _drop(raw, "train", "no_file"),
    "not-in-label-file": lambda raw: _drop(raw, "val", "nolabel"),
    "duplicate-id": lambda raw: _drop(raw, "val", "in_both"),
    "unreadable": lambda raw: _drop(raw, "train", "bad_pose"),
    "label-mismatch": lambda raw: _drop(raw, "train", "mismatch"),
}


def _drop(raw, part, vid):
    """Remove a clip from the release: its file and its label entry, where they exist."""
    (raw / f"kinetics_{part}" / f"{vid}.json").unlink(missing_ok=True)
    path = raw / f"kinetics_{part}_label.json"
    labels = json.loads(path.read_text())
    labels.pop(vid, None)
    path.write_text(json.dumps(labels))


def test_strict_refuses_each_problem_and_writes_nothing(tmp_path):
    raw = messy_release(tmp_path / "raw")
    out = tmp_path / "out" / "k.pkl"
    for reason, fix in STRICT_FIXES.items():
        with pytest.raises(KineticsFormatError, match=STRICT_CASES[reason]):
            kinetics_raw.convert_kinetics(raw, out, jobs=1, strict=True)
        assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no pickle, no temp, no tsv
        fix(raw)
    summary = kinetics_raw.convert_kinetics(raw, out, jobs=1, strict=True)
    assert summary["skipped"] == {} and summary["converted"] == {"train": 7, "val": 1}  # in_both left in train
    assert read_tsv(out.parent / "skipped.tsv") == []


def test_parts(tmp_path):
    raw = write_release(tmp_path / "raw", {"train": {"a": random_clip(1, 3), "b": random_clip(2, 1)}})
    out = tmp_path / "out" / "train.pkl"
    with pytest.raises(FileNotFoundError, match=f"label file not found: {raw / 'kinetics_val_label.json'}"):
        kinetics_raw.convert_kinetics(raw, out, jobs=1)  # both parts by default
    kinetics_raw.convert_kinetics(raw, out, parts=["train"], jobs=1)
    data = load_annotations(out)
    assert data["split"] == {"train": ["a", "b"]} and data["num_classes"] == 4
    write_release(raw, {"val": {"c": random_clip(3, 0)}})
    kinetics_raw.convert_kinetics(raw, out, parts=["val"], jobs=1)
    assert load_annotations(out)["split"] == {"val": ["c"]}
    kinetics_raw.convert_kinetics(raw, out, parts=["val", "train"], jobs=1)
    data = load_annotations(out)
    assert list(data["split"]) == ["train", "val"] and [a["frame_dir"] for a in data["annotations"]] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="parts must be among train, val, got test"):
        kinetics_raw.convert_kinetics(raw, out, parts=["test"])


def test_jobs_do_not_change_the_output(tmp_path):
    raw, _ = small_release(tmp_path)
    extra = {f"x{i:03d}": random_clip(100 + i, label_index=i % 5) for i in range(30)}
    extra["x_bad"] = clip_text([(400, [])])
    write_release(tmp_path / "more", {"train": extra})
    for path in (tmp_path / "more" / "kinetics_train").iterdir():
        path.rename(raw / "kinetics_train" / path.name)
    labels = json.loads((raw / "kinetics_train_label.json").read_text())
    labels.update(json.loads((tmp_path / "more" / "kinetics_train_label.json").read_text()))
    (raw / "kinetics_train_label.json").write_text(json.dumps(labels))
    one, two = tmp_path / "j1" / "k.pkl", tmp_path / "j2" / "k.pkl"
    kinetics_raw.convert_kinetics(raw, one, jobs=1)
    kinetics_raw.convert_kinetics(raw, two, jobs=2)
    assert one.read_bytes() == two.read_bytes()
    assert (one.parent / "skipped.tsv").read_bytes() == (two.parent / "skipped.tsv").read_bytes()
    assert len(read_tsv(one.parent / "skipped.tsv")) == 1
    assert len(pickle.loads(one.read_bytes())["annotations"]) == 9 + 30


def test_progress_lines(tmp_path, monkeypatch):
    raw, _ = small_release(tmp_path)
    monkeypatch.setattr(kinetics_raw, "PROGRESS_SECONDS", 0.0)
    log = io.StringIO()
    kinetics_raw.convert_kinetics(raw, tmp_path / "out" / "k.pkl", jobs=1, log=log)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("convert-kinetics: 1/9 files, ") and lines[0].endswith(" files/s, 0 skipped")
    assert lines[8].startswith("convert-kinetics: 9/9 files, ")
    assert lines[9].startswith(f"convert-kinetics: wrote {tmp_path / 'out' / 'k.pkl'}: 9 clips (5 train, 4 val) of 5 "
                               "classes in ")


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    raw, _ = small_release(tmp_path)
    out = tmp_path / "out" / "k.pkl"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    real, calls = kinetics_raw.msg3d_joint, []

    def joint_then_interrupt(clip, source):
        calls.append(source)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(clip, source)

    monkeypatch.setattr(kinetics_raw, "msg3d_joint", joint_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        kinetics_raw.convert_kinetics(raw, out, jobs=1)
    assert [p.name for p in out.parent.iterdir()] == ["k.pkl"] and out.read_bytes() == b"previous"


def test_release_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="release folder not found"):
        kinetics_raw.convert_kinetics(tmp_path / "nope", tmp_path / "a.pkl")
    raw = write_release(tmp_path / "raw", {"train": {"a": random_clip(1)}, "val": {}})
    (raw / "kinetics_val_label.json").write_text('{"a": ')
    with pytest.raises(KineticsFormatError, match=rf"{raw / 'kinetics_val_label.json'}: malformed JSON: .*line 1"):
        kinetics_raw.convert_kinetics(raw, tmp_path / "out" / "a.pkl")
    (raw / "kinetics_val_label.json").write_text("[]")
    with pytest.raises(KineticsFormatError, match="kinetics_val_label.json: expected a JSON object of video id"):
        kinetics_raw.convert_kinetics(raw, tmp_path / "out" / "a.pkl")
    (raw / "kinetics_val").rmdir()
    (raw / "kinetics_val_label.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="clip folder not found: .*kinetics_val"):
        kinetics_raw.convert_kinetics(raw, tmp_path / "out" / "a.pkl")
    assert not (tmp_path / "out").exists()
    (raw / "kinetics_train" / "a.json").write_text("{")
    with pytest.raises(ValueError, match="no clip converted from .*; see .*skipped.tsv"):
        kinetics_raw.convert_kinetics(raw, tmp_path / "out" / "a.pkl", parts=["train"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["skipped.tsv"]  # the reasons are kept


def test_output_loads_everywhere(tmp_path):
    raw, _ = small_release(tmp_path)
    out = tmp_path / "k.pkl"
    kinetics_raw.convert_kinetics(raw, out, jobs=1)
    with open(out, "rb") as f:
        plain = pickle.load(f)
    restricted = safe_pickle.load(out, "an annotation pickle")
    assert list(plain["annotations"][0]) == ["frame_dir", "label", "keypoint", "keypoint_score", "total_frames",
                                             "clip_frames"]
    for a, b in zip(plain["annotations"], restricted["annotations"]):
        assert a["frame_dir"] == b["frame_dir"] and np.array_equal(a["keypoint"], b["keypoint"])
        assert type(a["label"]) is int and type(a["clip_frames"]) is int
    assert plain["split"] == restricted["split"] and plain["num_classes"] == 5


# ---------------------------------------------------------------------------------------------
# command line


def test_cli(tmp_path, capsys):
    raw, _ = small_release(tmp_path)
    out = tmp_path / "out" / "k.pkl"
    assert cli.main(["convert-kinetics", str(raw), str(out), "--jobs", "1", "--parts", "val"]) == 0
    assert "convert-kinetics: wrote " in capsys.readouterr().err
    assert load_annotations(out)["split"] == {"val": ["-Kv0002xxxx", "-Kv0003xxxx", "-Kv0005xxxx", "-Kv0006xxxx"]}

    bad = raw / "kinetics_val" / "-Kv0003xxxx.json"
    bad.write_text(bad.read_text().replace('"frame_index": 0,', '"frame_index": -3,', 1))
    strict = tmp_path / "strict" / "k.pkl"
    assert cli.main(["convert-kinetics", str(raw), str(strict), "--jobs", "1", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err == (f"msg3d convert-kinetics: error: {bad}: frame -3 (data[0]): frame_index outside 0..299 "
                   "(MS-G3D keeps 300 frames)\n")
    assert not strict.parent.exists() or list(strict.parent.iterdir()) == []
    assert cli.main(["convert-kinetics", str(tmp_path / "nope"), str(strict)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["convert-kinetics", str(raw), str(strict), "--jobs", "0"]) == 2
    assert capsys.readouterr().err == "msg3d convert-kinetics: error: --jobs must be >= 1\n"


def test_no_heavy_imports():
    code = ("import sys, msg3d.data.kinetics_raw; "
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
