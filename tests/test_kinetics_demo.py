"""The synthetic Kinetics-skeleton release (msg3d.data.kinetics_demo)."""

import json

import numpy as np
import pytest

from msg3d import cli
from msg3d.data import kinetics_demo, kinetics_raw
from msg3d.data.pyskl_io import load_annotations


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinetics_demo") / "raw"
    kept = kinetics_demo.write_kinetics_release(root)
    return root, kept


def files_of(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.json"))}


def test_same_seed_same_bytes(demo, tmp_path):
    root, _ = demo
    again = tmp_path / "again"
    kinetics_demo.write_kinetics_release(again)
    assert files_of(again) == files_of(root)
    other = tmp_path / "other"
    kinetics_demo.write_kinetics_release(other, seed=1)
    assert set(files_of(other)).isdisjoint(set(files_of(root)) - {"kinetics_train_label.json",
                                                                   "kinetics_val_label.json"})


def test_layout_and_counts(demo):
    root, kept = demo
    assert sorted(p.name for p in root.iterdir()) == ["kinetics_train", "kinetics_train_label.json", "kinetics_val",
                                                      "kinetics_val_label.json"]
    for part, per_class in (("train", 12), ("val", 4)):
        labels = json.loads((root / f"kinetics_{part}_label.json").read_text())
        assert sorted(p.stem for p in (root / f"kinetics_{part}").iterdir()) == sorted(labels)
        with_skeleton = sorted(vid for vid, entry in labels.items() if entry["has_skeleton"])
        assert with_skeleton == kept[part] and len(with_skeleton) == 5 * per_class
        assert len(labels) == len(with_skeleton) + 1
        assert all(len(vid) == 11 for vid in labels)
        assert sorted(entry["label_index"] for vid, entry in labels.items() if entry["has_skeleton"]) == sorted(
            list(range(5)) * per_class)
        for vid, entry in labels.items():
            assert entry["label"] == kinetics_demo.MOTIONS[entry["label_index"]]


def test_clips_look_like_the_release(demo):
    root, _ = demo
    most_people, undetected, empty_frames, two_people = 0, 0, 0, 0
    for path in sorted(root.glob("kinetics_*/*.json")):
        clip = json.loads(path.read_text())
        indices = [frame["frame_index"] for frame in clip["data"]]
        assert indices == list(range(1, len(indices) + 1)) and len(indices) < 300
        counts = [len(frame["skeleton"]) for frame in clip["data"]]
        most_people = max(most_people, max(counts))
        empty_frames += counts.count(0)
        two_people += max(counts) >= 2
        for frame in clip["data"]:
            for skeleton in frame["skeleton"]:
                assert len(skeleton["pose"]) == 36 and len(skeleton["score"]) == 18
                pose = np.array(skeleton["pose"]).reshape(18, 2)
                score = np.array(skeleton["score"])
                assert ((score == 0) == (pose == 0).all(axis=1)).all()  # undetected: (0, 0) with score 0
                assert (pose >= 0).all() and (pose <= 1).all() and (score <= 1).all()
                undetected += int((score == 0).sum())
    assert most_people >= 6 and undetected > 0 and empty_frames > 0 and two_people > 10


def test_converts_cleanly_and_classes_are_separable(demo, tmp_path):
    root, kept = demo
    out = tmp_path / "k.pkl"
    summary = kinetics_raw.convert_kinetics(root, out, jobs=1, strict=True)
    assert summary["converted"] == {"train": 60, "val": 20} and summary["no_skeleton"] == 2
    data = load_annotations(out)
    assert data["num_classes"] == 5 and data["split"] == kept

    def feature(ann):
        # how much each joint moves around the neck, over the frames where the neck is seen
        kp, score = ann["keypoint"][0, : ann["clip_frames"]], ann["keypoint_score"][0, : ann["clip_frames"]]
        seen = score[:, 1] > 0
        rel, score = kp[seen] - kp[seen, 1:2], score[seen]
        spread = np.concatenate([rel[score[:, v] > 0, v].std(axis=0) for v in range(18)])
        return spread / np.linalg.norm(spread)

    by_part = {part: [a for a in data["annotations"] if a["frame_dir"] in set(ids)] for part, ids in kept.items()}
    train = np.array([feature(a) for a in by_part["train"]])
    train_labels = np.array([a["label"] for a in by_part["train"]])
    centroids = np.stack([train[train_labels == c].mean(axis=0) for c in range(5)])
    val = np.array([feature(a) for a in by_part["val"]])
    predicted = np.argmin(((val[:, None] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    assert (predicted == [a["label"] for a in by_part["val"]]).mean() >= 0.9


def test_arguments_and_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match="num_classes must be 1 ... 9"):
        kinetics_demo.write_kinetics_release(tmp_path / "a", num_classes=10)
    with pytest.raises(ValueError, match="need >= 1 train and val clip per class"):
        kinetics_demo.write_kinetics_release(tmp_path / "a", val_per_class=0)
    assert not (tmp_path / "a").exists()
    out = tmp_path / "demo"
    argv = ["make-kinetics-demo", str(out), "--classes", "9", "--train-per-class", "1", "--val-per-class", "1",
            "--seed", "3"]
    assert cli.main(argv) == 0
    assert "9 train and 9 val clips of 9 classes" in capsys.readouterr().err
    labels = json.loads((out / "kinetics_val_label.json").read_text())
    assert sorted(e["label_index"] for e in labels.values() if e["has_skeleton"]) == list(range(9))
    assert cli.main(["make-kinetics-demo", str(out), "--classes", "0"]) == 2
    assert capsys.readouterr().err.startswith("msg3d make-kinetics-demo: error: num_classes must be")
