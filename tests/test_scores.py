"""The scores format: write/read round trip, PYSKL's plain pickle, the sibling files, clear errors."""

import csv
import json
import pickle

import numpy as np
import pytest

from msg3d.class_names import class_names
from msg3d.fileio import write_csv_atomic
from msg3d.scores import check_same_samples, read_result, read_scores, sibling_paths, summary_metrics, write_scores

# frame_dirs that break a CSV written by joining with commas, or a reader that strips or splits
HOSTILE = ["a,b", 'say "hi"', "two  spaces ", " lead", "-rf", "ünï,cødé", '"', "", "x;y\ttab"]
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])


def _stream(tmp_path, name="s", frame_dirs=("A001", "A002", "A003", "A004"), labels=(0, 1, 2, 1), **kw):
    return write_scores(tmp_path / f"{name}.pkl", PROBS[:len(frame_dirs)], list(frame_dirs), labels, **kw)


def test_hostile_frame_dirs_round_trip(tmp_path):
    probs = np.random.default_rng(0).random((len(HOSTILE), 5)).astype(np.float32)
    labels = np.arange(len(HOSTILE)) % 5
    paths = write_scores(tmp_path / "h.pkl", probs, HOSTILE, labels)
    got_probs, got_dirs, got_labels = read_scores(paths.scores)
    assert got_dirs == HOSTILE
    np.testing.assert_array_equal(got_labels, labels)
    assert got_probs.dtype == np.float64 and got_probs.shape == (len(HOSTILE), 5)
    np.testing.assert_array_equal(got_probs, probs)
    # any csv reader sees the same rows: quoted where needed, one line per sample
    with open(paths.samples, newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["frame_dir", "label"]] + [[d, str(y)] for d, y in zip(HOSTILE, labels)]
    assert len(paths.samples.read_bytes().splitlines()) == 1 + len(HOSTILE)
    assert paths.samples.read_text(encoding="utf-8").startswith('frame_dir,label\n"a,b",0\n"say ""hi""",1\n')


@pytest.mark.parametrize("frame_dir", ["a\nb", "a\rb", "a\r\nb"])
def test_line_breaks_in_frame_dirs_are_refused(tmp_path, frame_dir):
    with pytest.raises(ValueError, match=r"s_samples.csv: frame_dir .* of sample 1 holds a line break"):
        write_scores(tmp_path / "s.pkl", PROBS[:2], ["ok", frame_dir], [0, 1])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pickle_is_a_plain_list_of_vectors_in_the_given_dtype(tmp_path, dtype):
    """PYSKL's result format; float32 from msg3d test, float64 from fusion, each kept as given."""
    paths = write_scores(tmp_path / "s.pkl", PROBS.astype(dtype), ["A001", "A002", "A003", "A004"], [0, 1, 2, 1])
    with open(paths.scores, "rb") as f:
        raw = pickle.load(f)
    assert type(raw) is list and len(raw) == 4
    for row, expected in zip(raw, PROBS):
        assert type(row) is np.ndarray and row.dtype == dtype and row.shape == (3,)
        np.testing.assert_array_equal(row, expected.astype(dtype))


def test_sibling_paths_are_what_msg3d_test_writes(tmp_path):
    paths = sibling_paths(tmp_path / "scores.pkl")
    assert paths.as_strings() == {
        "scores": str(tmp_path / "scores.pkl"),
        "metrics": str(tmp_path / "scores_metrics.json"),
        "samples": str(tmp_path / "scores_samples.csv"),
        "per_class": str(tmp_path / "scores_per_class.csv"),
        "confusion_npy": str(tmp_path / "scores_confusion.npy"),
        "confusion_csv": str(tmp_path / "scores_confusion.csv"),
    }
    assert sibling_paths(tmp_path / "s.pkl", tmp_path / "m.json").metrics == tmp_path / "m.json"
    # only .pkl is a suffix of the format: other dots stay in the stem
    assert sibling_paths(tmp_path / "run.v2").samples == tmp_path / "run.v2_samples.csv"

    _stream(tmp_path, "bare")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pkl", "bare_samples.csv"]
    metrics = {"note": "full"}
    written = _stream(tmp_path, "full", metrics=metrics)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("full"))
    assert names == sorted(p.name for p in vars(written).values())
    assert json.loads(written.metrics.read_text()) == metrics


def test_per_class_and_confusion_files(tmp_path):
    # labels 0, 1, 2, 1; argmax 0, 1, 2, 0; class 3 has no sample
    probs = np.hstack([PROBS, np.zeros((4, 1))])
    paths = write_scores(tmp_path / "s.pkl", probs, ["a", "b", "c", "d"], [0, 1, 2, 1], {})
    # 4 classes: no dataset has that many, so the names are empty
    assert paths.per_class.read_text() == (
        "class,support,correct,accuracy,name\n0,1,1,1.0,\n1,2,1,0.5,\n2,1,1,1.0,\n3,0,0,,\n")
    cm = np.load(paths.confusion_npy)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert paths.confusion_csv.read_text() == (
        "true\\pred,0,1,2,3\n0,1,0,0,0\n1,1,1,0,0\n2,0,0,1,0\n3,0,0,0,0\n")


@pytest.mark.parametrize("dataset", ["ntu60", "ntu120", "kinetics400"])
def test_per_class_csv_names_the_classes_of_a_known_class_count(tmp_path, dataset):
    """NTU RGB+D 60/120 and Kinetics-400 by their class count (msg3d.class_names); the existing
    columns keep their order, the name comes last."""
    names = class_names(dataset)
    k = len(names)
    labels = np.arange(k)
    probs = np.eye(k)[(labels + (labels == 1)) % k]  # all right but class 1, taken for class 2
    paths = write_scores(tmp_path / "s.pkl", probs, [f"s{c}" for c in range(k)], labels, {})
    with open(paths.per_class, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "support", "correct", "accuracy", "name"]
    assert [row[4] for row in rows[1:]] == list(names)
    assert rows[1:3] == [["0", "1", "1", "1.0", names[0]], ["1", "1", "0", "0.0", names[1]]]
    if dataset == "ntu60":
        assert rows[1][4] == "drink water" and rows[60][4] == "walking apart from each other"


def test_write_refuses_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"must be \(samples, classes\).*got 3 frame_dirs"):
        write_scores(tmp_path / "s.pkl", PROBS, ["a", "b", "c"], [0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"labels \(3,\)"):
        write_scores(tmp_path / "s.pkl", PROBS, ["a", "b", "c", "d"], [0, 1, 2])
    assert not list(tmp_path.iterdir())


def test_read_errors_name_the_file_and_line(tmp_path):
    paths = _stream(tmp_path)
    with pytest.raises(FileNotFoundError, match="none.pkl: scores file not found"):
        read_scores(tmp_path / "none.pkl")

    def samples(text):
        paths.samples.write_text(text, encoding="utf-8")
        return paths.scores

    with pytest.raises(ValueError, match=r"s_samples.csv: line 1: expected the header 'frame_dir,label', "
                                         r"got 'frame,label'"):
        read_scores(samples("frame,label\nA001,0\n"))
    with pytest.raises(ValueError, match="line 1: expected the header 'frame_dir,label', got 'an empty file'"):
        read_scores(samples(""))
    with pytest.raises(ValueError, match=r"s_samples.csv: line 3: label 'x' of sample A002 is not an integer"):
        read_scores(samples("frame_dir,label\nA001,0\nA002,x\nA003,2\nA004,1\n"))
    with pytest.raises(ValueError, match=r"s_samples.csv: line 2: expected 2 fields \(frame_dir,label\), got 3"):
        read_scores(samples("frame_dir,label\nA,001,0\n"))
    with pytest.raises(ValueError, match=r"s.pkl: 4 score vectors but 3 samples in .*s_samples.csv"):
        read_scores(samples("frame_dir,label\nA001,0\nA002,1\nA003,2\n"))
    paths.samples.unlink()
    with pytest.raises(FileNotFoundError, match="s_samples.csv: sample list not found"):
        read_scores(paths.scores)


def test_read_refuses_what_is_not_a_list_of_vectors(tmp_path):
    path = _stream(tmp_path).scores
    path.write_bytes(pickle.dumps({"scores": PROBS}))
    with pytest.raises(ValueError, match="s.pkl: expected a list of probability vectors .* got dict"):
        read_scores(path)
    path.write_bytes(pickle.dumps([np.zeros(3), np.zeros(2)]))
    with pytest.raises(ValueError, match="s.pkl: expected a list of equal-length probability vectors"):
        read_scores(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="s.pkl: not a scores pickle"):
        read_scores(path)


def test_check_same_samples_messages(tmp_path):
    def stream(name, frame_dirs=("A001", "A002", "A003"), labels=(0, 1, 2)):
        return tmp_path / f"{name}_samples.csv", list(frame_dirs), np.asarray(labels)

    check_same_samples({"j": stream("j"), "b": stream("b")})
    with pytest.raises(ValueError, match=r"streams 'j' and 'b' cover different samples: "
                                         r"3 in .*j_samples.csv, 2 in .*b_samples.csv"):
        check_same_samples({"j": stream("j"), "b": stream("b", ["A001", "A002"], [0, 1])})
    with pytest.raises(ValueError, match=r"streams 'j' and 'b' list different samples or a different order: "
                                         r"sample 1 is A002 at line 3 of .*j_samples.csv "
                                         r"but A003 at line 3 of .*b_samples.csv"):
        check_same_samples({"j": stream("j"), "b": stream("b", ["A001", "A003", "A002"])})
    with pytest.raises(ValueError, match=r"streams 'j' and 'b' disagree on the label of sample A003: "
                                         r"2 at line 4 of .*j_samples.csv, 0 at line 4 of .*b_samples.csv"):
        check_same_samples({"j": stream("j"), "b": stream("b", labels=[0, 1, 0])})
    # a PYSKL result's samples come from a split of an annotation pickle: positions, not lines
    with pytest.raises(ValueError, match=r"sample 1 is A002 at line 3 of .*j_samples.csv "
                                         r"but A003 at position 1 of split 'xsub_val' of ann.pkl"):
        check_same_samples({"j": stream("j"),
                            "r": ("split 'xsub_val' of ann.pkl", ["A001", "A003", "A002"], np.arange(3))})


def test_summary_metrics():
    # argmax 0, 1, 2, 0 against labels 0, 1, 2, 1: top-1 3/4; class 1 recall 1/2
    got = summary_metrics(PROBS, np.array([0, 1, 2, 1]))
    assert got == {"top1": 0.75, "top5": 1.0, "mean_class_accuracy": pytest.approx(2.5 / 3), "num_samples": 4}
    assert all(type(v) is float for k, v in got.items() if k != "num_samples")


def test_write_csv_atomic(tmp_path):
    path = tmp_path / "t.csv"
    write_csv_atomic(path, ["a", "b"], [[1, "x,y"], [2, 'q"']])
    assert path.read_bytes() == b'a,b\n1,"x,y"\n2,"q"""\n'
    with pytest.raises(ValueError, match="t.csv: a CSV field holds a carriage return"):
        write_csv_atomic(path, ["a", "b"], [[3, "ok"], [4, "c\rd"]])
    assert path.read_bytes() == b'a,b\n1,"x,y"\n2,"q"""\n'  # the previous file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


class Payload:
    """Unpickles by running ``os.system(command)``: what a hostile pickle from elsewhere does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_hostile_scores_pickle_is_refused(tmp_path):
    paths = _stream(tmp_path)
    marker = tmp_path / "MARK"
    paths.scores.write_bytes(pickle.dumps([Payload(f"touch '{marker}'")], protocol=2))
    with pytest.raises(ValueError) as info:
        read_scores(paths.scores)
    assert str(info.value) == (f"{paths.scores}: refused to load: it asks for posix.system, which a scores pickle "
                               "never holds (a pickle from elsewhere can run code)")
    with pytest.raises(ValueError, match="refused to load: it asks for posix.system"):
        read_result(paths.scores, ["A001"], [0], "split 'xsub_val' of ann.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("argv", [
    ["fuse", "--scores", "j={ok}", "b={bad}", "--out", "{out}/fused.json"],
    ["fuse", "--scores", "j={ok}", "b={bad}", "--search", "0,1", "--out", "{out}/fused.json"],
    ["fuse", "--scores", "j={ok}", "b={bad}", "--ann", "{out}/ann.pkl", "--split", "xsub_val",
     "--out", "{out}/fused.json"],
    ["plot", "confusion", "--scores", "{bad}", "--out", "{out}/confusion.svg"],
    ["plot", "per-class", "--scores", "j={ok}", "b={bad}", "--out", "{out}/per_class.svg"],
])
def test_every_command_that_reads_scores_refuses_a_hostile_pickle(tmp_path, argv, capsys):
    from msg3d.cli import main

    ok = _stream(tmp_path, "ok").scores
    bad = _stream(tmp_path, "bad").scores
    marker = tmp_path / "MARK"
    bad.write_bytes(pickle.dumps([Payload(f"touch '{marker}'")], protocol=2))
    out = tmp_path / "out"
    out.mkdir()
    names = ["A001", "A002", "A003", "A004"]
    ann = {"split": {"xsub_val": names}, "annotations": [
        {"frame_dir": n, "label": y, "total_frames": 2, "keypoint": np.zeros((1, 2, 25, 3), np.float32)}
        for n, y in zip(names, (0, 1, 2, 1))]}
    (out / "ann.pkl").write_bytes(pickle.dumps(ann))
    assert main([a.format(ok=ok, bad=bad, out=out) for a in argv]) == 2
    assert f"{bad}: refused to load: it asks for posix.system" in capsys.readouterr().err
    assert not marker.exists()
    assert [p.name for p in out.iterdir()] == ["ann.pkl"]


def test_non_finite_scores_are_refused_when_written(tmp_path):
    probs = PROBS.copy()
    probs[1, 2] = np.nan
    probs[3, 0] = np.inf
    with pytest.raises(ValueError) as info:
        write_scores(tmp_path / "s.pkl", probs, ["A001", "A002", "A003", "A004"], [0, 1, 2, 1], {"top1": 0.5})
    assert str(info.value) == (f"{tmp_path / 's.pkl'}: refusing to write non-finite scores (NaN or inf) for 2 of 4 "
                               "samples (first: A002); nothing written")
    assert not list(tmp_path.iterdir())


def test_non_finite_scores_are_refused_when_read(tmp_path):
    paths = _stream(tmp_path)
    vectors = [row.copy() for row in PROBS]
    vectors[2][:] = np.nan
    paths.scores.write_bytes(pickle.dumps(vectors))
    with pytest.raises(ValueError, match=r"s.pkl: non-finite scores \(NaN or inf\) for 1 of 4 samples \(first: A003\) "
                                         r"\(from a diverged or corrupt checkpoint\?\); refusing to use them"):
        read_scores(paths.scores)
    with pytest.raises(ValueError, match=r"for 1 of 4 samples \(first: A003\)"):
        read_result(paths.scores, ["A001", "A002", "A003", "A004"], [0, 1, 2, 1], "split 'xsub_val' of ann.pkl")


def test_read_result_takes_the_samples_from_elsewhere(tmp_path):
    """PYSKL's result.pkl: a list of float32 vectors (mmcv.dump: protocol 2), no samples CSV."""
    path = tmp_path / "result.pkl"
    path.write_bytes(pickle.dumps([row.astype(np.float32) for row in PROBS], protocol=2))
    probs, frame_dirs, labels = read_result(path, ("A001", "A002", "A003", "A004"), [0, 1, 2, 1], "split")
    np.testing.assert_array_equal(probs, PROBS.astype(np.float32))
    assert probs.dtype == np.float64 and frame_dirs == ["A001", "A002", "A003", "A004"]
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError, match=r"result.pkl: 4 score vectors but 3 samples in split 'xsub_val' of ann.pkl"):
        read_result(path, ["A001", "A002", "A003"], [0, 1, 2], "split 'xsub_val' of ann.pkl")
    with pytest.raises(FileNotFoundError, match="none.pkl: scores file not found"):
        read_result(tmp_path / "none.pkl", [], [], "split")
