"""Score fusion: hand-computed weighted sums, sample-order checks, the weight search, the CLI."""

import json
import pickle
import re

import numpy as np
import pytest

from msg3d.cli import main
from msg3d.report.fusion import (fuse_files, fuse_scores, search_files, search_weights, split_problem,
                                 stratified_halves)
from msg3d.scores import read_scores, write_scores

FRAME_DIRS = ["S001C001P003R001A001", "S001C001P003R001A002", "S001C001P003R001A003"]
LABELS = [0, 1, 2]

# Three samples, three classes. Stream j gets sample 1 wrong, stream b gets sample 2 wrong.
J = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
B = np.array([[0.5, 0.2, 0.3], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3]])


def write_stream(folder, name, probs, frame_dirs=FRAME_DIRS, labels=LABELS):
    path = folder / f"{name}.pkl"
    with open(path, "wb") as f:
        pickle.dump([np.asarray(p, dtype=np.float32) for p in probs], f)
    rows = ["frame_dir,label"] + [f"{d},{y}" for d, y in zip(frame_dirs, labels)]
    (folder / f"{name}_samples.csv").write_text("\n".join(rows) + "\n")
    return path


def test_weighted_sum_by_hand():
    fused = fuse_scores({"j": J, "b": B}, {"j": 2, "b": 1})
    # sample 1: 2*[0.5,0.4,0.1] + [0.1,0.8,0.1] = [1.1, 1.6, 0.3]
    np.testing.assert_allclose(fused[1], [1.1, 1.6, 0.3])
    np.testing.assert_allclose(fused[0], [1.7, 0.8, 0.5])
    np.testing.assert_allclose(fused[2], [0.4, 0.9, 1.7])


def test_fuse_files_metrics_and_outputs(tmp_path):
    paths = {"j": write_stream(tmp_path, "j", J), "b": write_stream(tmp_path, "b", B)}
    out = tmp_path / "out" / "2s.json"
    result = fuse_files(paths, {"j": 1, "b": 1}, out, tmp_path / "out" / "2s.pkl", scheme="2s")
    # j+b: [1.1,.5,.4] -> 0 ok; [.6,1.2,.2] -> 1 ok; [.3,.7,1.0] -> 2 ok
    assert result["top1"] == 1.0
    assert result["streams"]["j"]["top1"] == pytest.approx(2 / 3)
    assert result["streams"]["b"]["top1"] == pytest.approx(2 / 3)
    assert json.loads(out.read_text()) == result
    with open(tmp_path / "out" / "2s.pkl", "rb") as f:
        fused = np.stack(pickle.load(f))
    # the pickles hold float32, so the sum is of the float32 values
    np.testing.assert_allclose(fused[2], [0.3, 0.7, 1.0], rtol=1e-6)
    assert (tmp_path / "out" / "2s_samples.csv").read_text() == (tmp_path / "j_samples.csv").read_text()


def test_fused_stream_keeps_frame_dirs_with_commas_and_quotes(tmp_path):
    odd = ["S001,C001", 'S002 "x"', "S003"]
    paths = {name: write_scores(tmp_path / f"{name}.pkl", probs, odd, LABELS).scores
             for name, probs in (("j", J), ("b", B))}
    fuse_files(paths, {"j": 1, "b": 1}, tmp_path / "2s.json", tmp_path / "2s.pkl")
    probs, frame_dirs, labels = read_scores(tmp_path / "2s.pkl")
    assert frame_dirs == odd and labels.tolist() == LABELS
    np.testing.assert_allclose(probs, J + B, rtol=1e-6)


def test_weights_change_the_winner(tmp_path):
    paths = {"j": write_stream(tmp_path, "j", J), "b": write_stream(tmp_path, "b", B)}
    # 3:1 for j: sample 1 -> [1.6, 2.0, .4] still 1; sample 2 -> [.5, 1.1, 2.4] -> 2. All right.
    # 1:3 for j: sample 2 -> [0.7, 1.7, 1.6] -> 1, wrong.
    result = fuse_files(paths, {"j": 1, "b": 3}, tmp_path / "x.json")
    assert result["top1"] == pytest.approx(2 / 3)


def test_mismatched_order_is_rejected(tmp_path):
    j = write_stream(tmp_path, "j", J)
    b = write_stream(tmp_path, "b", B[::-1], frame_dirs=FRAME_DIRS[::-1], labels=LABELS[::-1])
    with pytest.raises(ValueError, match=r"different samples or a different order: sample 0 .*A001.*A003"):
        fuse_files({"j": j, "b": b}, {"j": 1, "b": 1}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_different_sample_sets_and_labels_are_rejected(tmp_path):
    j = write_stream(tmp_path, "j", J)
    b = write_stream(tmp_path, "b", B[:2], frame_dirs=FRAME_DIRS[:2], labels=LABELS[:2])
    with pytest.raises(ValueError, match="cover different samples: 3 in .*j_samples.csv, 2 in .*b_samples.csv"):
        fuse_files({"j": j, "b": b}, {"j": 1, "b": 1}, tmp_path / "x.json")
    b = write_stream(tmp_path, "b", B, labels=[0, 1, 1])
    with pytest.raises(ValueError, match="disagree on the label of sample S001C001P003R001A003"):
        fuse_files({"j": j, "b": b}, {"j": 1, "b": 1}, tmp_path / "x.json")


def test_scores_and_sample_list_must_agree(tmp_path):
    j = write_stream(tmp_path, "j", J[:2])
    with pytest.raises(ValueError, match="2 score vectors but 3 samples"):
        fuse_files({"j": j}, {"j": 1}, tmp_path / "x.json")
    (tmp_path / "j_samples.csv").unlink()
    with pytest.raises(FileNotFoundError, match="j_samples.csv: sample list not found"):
        fuse_files({"j": j}, {"j": 1}, tmp_path / "x.json")


def test_bad_weights():
    with pytest.raises(ValueError, match=r"weights are given for \['j'\] but the streams are \['b', 'j'\]"):
        fuse_scores({"j": J, "b": B}, {"j": 1})
    with pytest.raises(ValueError, match="weight of stream 'b' must be a finite number >= 0"):
        fuse_scores({"j": J, "b": B}, {"j": 1, "b": -1})
    with pytest.raises(ValueError, match="all fusion weights are zero"):
        fuse_scores({"j": J, "b": B}, {"j": 0, "b": 0})


def test_stratified_halves_are_disjoint_and_cover_every_class():
    labels = np.repeat(np.arange(4), 5)
    select, evaluate = stratified_halves(labels, seed=3)
    assert len(select) == 12 and len(evaluate) == 8
    assert not set(select) & set(evaluate)
    assert set(labels[select]) == set(labels[evaluate]) == {0, 1, 2, 3}
    again = stratified_halves(labels, seed=3)
    assert np.array_equal(again[0], select)


def test_search_picks_the_stream_that_is_right_on_the_selection_half():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 6)
    good = np.eye(3)[labels] * 0.6 + rng.random((18, 3)) * 0.1  # always right
    bad = np.eye(3)[(labels + 1) % 3] * 0.9  # always wrong, and more confident
    found = search_weights({"good": good, "bad": bad}, labels, grid=[0, 1, 2])
    assert found["weights"] == {"bad": 0, "good": 1}
    assert found["select"]["top1"] == found["evaluate"]["top1"] == 1.0
    assert found["select"]["num_samples"] + found["evaluate"]["num_samples"] == 18


def test_cli(tmp_path, capsys):
    j, b = write_stream(tmp_path, "j", J), write_stream(tmp_path, "b", B)
    out = tmp_path / "f.json"
    assert main(["fuse", "--scores", f"j={j}", f"b={b}", "--weights-json", '{"j": 1, "b": 3}', "--out", str(out)]) == 0
    assert json.loads(out.read_text())["weights"] == {"b": 3, "j": 1}
    assert main(["fuse", "--scores", f"j={j}", f"b={b}", "--weights-json", '{"j": 1}', "--out", str(out)]) == 2
    assert "msg3d fuse: error: weights are given for ['j']" in capsys.readouterr().err
    assert main(["fuse", "--scores", f"j={j}", "--search", "0,x", "--out", str(out)]) == 2


def test_logits_are_summed_as_msg3ds_ensemble(tmp_path, capsys):
    """MS-G3D's ensemble.py adds the streams' raw scores: with logits the winner can differ from
    the sum of the same streams' probabilities."""
    j_logits = np.array([[5.0, 0.0, 0.0], [0.0, 1.0, 0.9], [0.0, 0.0, 1.0]])
    b_logits = np.array([[0.0, 5.5, 5.4], [0.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
    j, b = write_stream(tmp_path, "j", j_logits), write_stream(tmp_path, "b", b_logits)
    out = tmp_path / "ensemble.json"
    assert main(["fuse", "--logits", "--scheme", "ensemble", "--scores", f"j={j}", f"b={b}", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "weighted sum of clip-averaged logits (MS-G3D's ensemble)"
    summed = (j_logits + b_logits).argmax(1)  # [1, 2, 1]; the probabilities' sum: [0, 2, 1]
    assert result["top1"] == pytest.approx(np.mean(summed == LABELS))
    probs = [np.exp(x) / np.exp(x).sum(1, keepdims=True) for x in (j_logits, b_logits)]
    assert not np.array_equal((probs[0] + probs[1]).argmax(1), summed)
    assert main(["fuse", "--logits", "--search", "0,1", "--scores", f"j={j}", f"b={b}", "--out", str(out)]) == 2
    assert "--search chooses the weights itself from probabilities" in capsys.readouterr().err


@pytest.mark.parametrize("search", [False, True])
def test_non_finite_stream_is_refused_and_nothing_written(tmp_path, capsys, search):
    j = write_stream(tmp_path, "j", J)
    nan = J.copy()
    nan[0] = np.nan
    nan[2, 1] = np.inf
    b = write_stream(tmp_path, "b", nan)
    out = tmp_path / "out"
    argv = ["fuse", "--scores", f"j={j}", f"b={b}", "--out", str(out / "f.json")]
    argv += ["--search", "0,1,2"] if search else ["--out-scores", str(out / "f.pkl")]
    assert main(argv) == 2
    assert (f"msg3d fuse: error: {b}: non-finite scores (NaN or inf) for 2 of 3 samples (first: {FRAME_DIRS[0]}) "
            "(from a diverged or corrupt checkpoint?); refusing to use them") in capsys.readouterr().err
    assert not out.exists()


def test_weights_that_overflow_are_refused():
    # 1.7e308 * (0.6 + 0.5) and 1.7e308 * (0.4 + 0.8) exceed float64; sample 2 stays below (0.7 + 0.3)
    with pytest.raises(ValueError, match=r"fusion with weights .* gives non-finite scores \(NaN or inf\) for 2 of 3 "
                                         r"samples \(first: sample 0\) \(weights so large that the sum overflows\?\)"):
        fuse_scores({"j": J, "b": B}, {"j": 1.7e308, "b": 1.7e308})


def annotations(path, val_order):
    """An annotation pickle whose xsub_val lists FRAME_DIRS in ``val_order`` (the annotations keep theirs)."""
    anns = [{"frame_dir": d, "label": y, "total_frames": 2, "keypoint": np.zeros((1, 2, 25, 3), np.float16)}
            for d, y in zip(FRAME_DIRS, LABELS)]
    anns.insert(1, {**anns[0], "frame_dir": "S001C001P001R001A001"})  # a training sample between them
    split = {"xsub_train": ["S001C001P001R001A001"], "xsub_val": [FRAME_DIRS[i] for i in val_order]}
    path.write_bytes(pickle.dumps({"split": split, "annotations": anns}, protocol=2))
    return path


def pyskl_result(path, probs):
    """PYSKL's tools/test.py --out: a list of float32 vectors (mmcv.dump, protocol 2), nothing beside it."""
    path.write_bytes(pickle.dumps([np.asarray(p, dtype=np.float32) for p in probs], protocol=2))
    return path


def test_pyskl_results_fused_with_samples_from_the_annotations(tmp_path, capsys):
    ann = annotations(tmp_path / "ann.pkl", val_order=[2, 0, 1])  # the split's own order does not matter
    j, b = pyskl_result(tmp_path / "j_result.pkl", J), pyskl_result(tmp_path / "b_result.pkl", B)
    out = tmp_path / "out"
    assert main(["fuse", "--scores", f"j={j}", f"b={b}", "--ann", str(ann), "--split", "xsub_val",
                 "--out", str(out / "2s.json"), "--out-scores", str(out / "2s.pkl")]) == 0
    result = json.loads((out / "2s.json").read_text())
    assert result["top1"] == 1.0 and result["num_samples"] == 3
    assert result["streams"]["j"]["top1"] == pytest.approx(2 / 3)
    probs, frame_dirs, labels = read_scores(out / "2s.pkl")
    assert frame_dirs == FRAME_DIRS and labels.tolist() == LABELS  # annotation order, as PYSKL tests
    np.testing.assert_allclose(probs, J + B, rtol=1e-6)

    # a stream with its own sample list must agree with the annotations
    ours = write_stream(tmp_path, "ours", J, frame_dirs=FRAME_DIRS[::-1], labels=LABELS[::-1])
    assert main(["fuse", "--scores", f"ours={ours}", f"b={b}", "--ann", str(ann), "--split", "xsub_val",
                 "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert (f"sample 0 is {FRAME_DIRS[2]} at line 2 of {tmp_path / 'ours_samples.csv'} but {FRAME_DIRS[0]} "
            f"at position 0 of split 'xsub_val' of {ann}") in err
    assert not (tmp_path / "x.json").exists()


def test_pyskl_result_errors(tmp_path, capsys):
    ann = annotations(tmp_path / "ann.pkl", val_order=[0, 1, 2])
    j = pyskl_result(tmp_path / "j.pkl", J[:2])
    base = ["fuse", "--scores", f"j={j}", "--out", str(tmp_path / "x.json")]
    assert main(base + ["--ann", str(ann), "--split", "xsub_val"]) == 2
    assert f"{j}: 2 score vectors but 3 samples in split 'xsub_val' of {ann}" in capsys.readouterr().err
    assert main(base + ["--ann", str(ann), "--split", "xview_val"]) == 2
    assert f"{ann}: no split 'xview_val'; its splits are xsub_train, xsub_val" in capsys.readouterr().err
    assert main(base + ["--ann", str(ann)]) == 2
    assert "--ann and --split go together" in capsys.readouterr().err
    assert main(base) == 2  # without --ann a result.pkl has no samples
    assert "j_samples.csv: sample list not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("labels, problem", [
    ([], "no samples to split into a selection and an evaluation half"),
    ([0, 1, 2], "3 of the 3 classes among the 3 samples have a single sample (first: class 0)"),
    ([0, 0, 1, 2, 2, 3], "2 of the 4 classes among the 6 samples have a single sample (first: class 1)"),
])
def test_split_problem_names_why_the_halves_cannot_be_made(labels, problem):
    """The rule: at least one sample and 2 samples of every class present, so that both halves hold
    every class (with one sample of a class, the evaluation half would lack it)."""
    assert split_problem(np.asarray(labels, dtype=np.int64)).startswith(problem)
    if labels:
        select, evaluate = stratified_halves(np.asarray(labels), seed=0)
        assert set(np.asarray(labels)[evaluate]) != set(labels)
    with pytest.raises(ValueError, match="cannot search fusion weights: " + re.escape(problem)):
        search_weights({"j": np.ones((len(labels), 4))}, np.asarray(labels, dtype=np.int64), grid=[1])


def test_two_samples_of_every_class_are_enough():
    labels = np.array([0, 0, 1, 1, 5, 5])
    assert split_problem(labels) is None
    select, evaluate = stratified_halves(labels, seed=0)
    assert set(labels[select]) == set(labels[evaluate]) == {0, 1, 5}


def test_search_on_a_val_set_too_small_to_halve_is_skipped_not_failed(tmp_path, capsys):
    """A workflow's fuse_search job must not stop the DAG: the JSON says why, the exit status is 0,
    and the table shows the entry as skipped (tests/test_table.py)."""
    j, b = write_stream(tmp_path, "j", J), write_stream(tmp_path, "b", B)  # 3 classes, 1 sample each
    out = tmp_path / "fusion" / "search.json"
    assert main(["fuse", "--scheme", "search", "--scores", f"j={j}", f"b={b}", "--search", "0,1,2",
                 "--seed", "4", "--out", str(out)]) == 0
    reason = ("3 of the 3 classes among the 3 samples have a single sample (first: class 0); splitting into two "
              "class-stratified halves needs at least 2 samples of every class")
    assert f"fusion weight search skipped ({out} says why): {reason}" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result == {"scheme": "search", "method": result["method"], "grid": [0, 1, 2], "seed": 4,
                      "streams": {"b": {"scores": str(b)}, "j": {"scores": str(j)}}, "num_classes": 3,
                      "skipped": reason, "num_samples": 3}
    assert "weights" not in result and "top1" not in result
    # a bad grid is still an error, not a skip
    assert main(["fuse", "--scores", f"j={j}", f"b={b}", "--search", "0,0", "--out", str(tmp_path / "x.json")]) == 2
    assert "the weight grid must hold non-negative integers, at least one positive" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_search_files_runs_when_every_class_has_two_samples(tmp_path):
    labels = [0, 0, 1, 1, 2, 2]
    dirs = [f"S{i:03d}" for i in range(6)]
    j = write_stream(tmp_path, "j", np.repeat(J, 2, axis=0), frame_dirs=dirs, labels=labels)
    b = write_stream(tmp_path, "b", np.repeat(B, 2, axis=0), frame_dirs=dirs, labels=labels)
    result = search_files({"j": j, "b": b}, [0, 1], tmp_path / "s.json", scheme="search")
    assert "skipped" not in result
    assert result["num_samples"] == 3 and result["selection"]["num_samples"] == 3
    assert result["weights"] == {"b": 1, "j": 1}  # j+b gets all three classes right
