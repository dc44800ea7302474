"""`msg3d predict`: every input kind against `msg3d test` on the same samples and checkpoints, the
windows of a long recording, fusion, class names and the errors."""

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import TEST_FIXTURES
from msg3d.class_names import class_names, label_text
from msg3d.cli import main as cli_main
from msg3d.data.demo import EMPTY_NAME, make_demo, recording
from msg3d.data.derive import derive, derive_annotations
from msg3d.data.kinetics_demo import write_kinetics_release
from msg3d.data.kinetics_raw import read_clip
from msg3d.data.ntu_raw import SkeletonFormatError, convert_file, convert_ntu, format_skeleton_file
from msg3d.data.store import open_store
from msg3d.deploy.predict import load_streams, predictions
from msg3d.deploy.windows import window_bounds
from msg3d.engine.test import evaluate_checkpoint
from msg3d.engine.train import train
from msg3d.models import build_model
from msg3d.report.fusion import fuse_scores

pytest_plugins = ["test_engine_common"]  # fixture: one_torch_thread
pytestmark = pytest.mark.usefixtures("one_torch_thread")

NTU_SMALL = TEST_FIXTURES / "pyskl_msg3d_ntu_small_ref.pt"
COCO_SMALL = TEST_FIXTURES / "pyskl_msg3d_coco_small_ref.pt"
# PYSKL's compact reference models (tests/fixtures/README.md), shortened clips to keep them fast
SMALL_HP = json.dumps({"model": {"base_channels": 24}, "clip_len": 32, "test_clips": 2})
TINY_MODEL = {"base_channels": 6, "num_gcn_scales": 2, "num_g3d_scales": 2}
TINY_HP = {"epochs": 1, "repeat": 1, "batch_size": 4, "lr": 0.05, "lr_batch": 4, "clip_len": 16, "test_clips": 3,
           "num_workers": 0, "model": TINY_MODEL}
NUM_CLASSES = 5  # the demo's actions


def sharpen(checkpoint, factor=1000.0):
    """Scale the classifier of a checkpoint in place (its recorded config kept), so that its scores are
    far from uniform after a one-epoch training and a wrong pipeline cannot hide in tiny differences."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"]["cls_head.fc_cls.weight"] *= factor
    torch.save(ckpt, checkpoint)


def build_demo(root):
    """Raw demo recordings, their PYSKL pickle, a j and a b store, a tiny model trained on each
    (xsub, then ``sharpen``ed) and `msg3d test`'s scores of it: what the predictions must reproduce."""
    root = Path(root)
    make_demo(root / "raw", train_subjects=1, val_subjects=1, min_frames=20, max_frames=40)
    ann = root / "ntu60.pkl"
    convert_ntu(root / "raw", ann, "ntu60", jobs=1)
    demo = SimpleNamespace(root=root, raw=root / "raw", ann=ann, checkpoints={}, scores={})
    for modality in ("j", "b"):
        store = derive(ann, root / "stores" / modality, "nturgb+d", modality, progress=False)
        run = root / "runs" / modality
        train(store, "xsub", run, TINY_HP, seed=3, device="cpu", progress_seconds=0)
        demo.checkpoints[modality] = run / "best.pth"
        sharpen(run / "best.pth")
        evaluate_checkpoint(store, "xsub", run / "best.pth", root / f"{modality}.pkl", num_workers=0, device="cpu",
                            progress_seconds=1e9)
        with open(root / f"{modality}.pkl", "rb") as f:
            scores = pickle.load(f)
        val = open_store(store)
        fds = val.frame_dirs[val.splits["xsub_val"]]
        demo.scores[modality] = dict(zip(fds.tolist(), scores))
    demo.val = sorted(demo.scores["j"])
    return demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"))


def run_predict(args, tmp_path, name="out.json"):
    """`msg3d predict ARGS --json OUT`: the JSON records."""
    out = tmp_path / name
    assert cli_main(["predict", *map(str, args), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def probs_of(record, num_classes=NUM_CLASSES):
    """The full probability vector of a record listing every class."""
    assert len(record["topk"]) == num_classes
    probs = np.zeros(num_classes)
    for item in record["topk"]:
        probs[item["label"]] = item["prob"]
    return probs


def assert_equals_test(records, scores, atol=1e-6):
    assert records and len({r["sample"] for r in records}) == len(records)
    spread = np.ptp([probs_of(r) for r in records], axis=0).max()
    assert spread > 1000 * atol  # the samples' scores differ: the comparison means something
    for record in records:
        np.testing.assert_allclose(probs_of(record), scores[record["sample"]], rtol=0, atol=atol)


# --------------------------------------------------------------------------- input kinds


def test_raw_files_give_msg3d_tests_probabilities(demo, tmp_path, capsys):
    files = [demo.raw / f"{fd}.skeleton" for fd in demo.val]
    records = run_predict(["--checkpoint", demo.checkpoints["j"], *files, "--top-k", NUM_CLASSES], tmp_path)
    assert [r["input"] for r in records] == list(map(str, files))
    assert [r["sample"] for r in records] == demo.val
    assert_equals_test(records, demo.scores["j"])
    for record in records:
        assert [item["prob"] for item in record["topk"]] == sorted((i["prob"] for i in record["topk"]), reverse=True)
        assert set(record) == {"input", "sample", "topk"}
        assert all(set(item) == {"label", "name", "prob"} for item in record["topk"])
    out = capsys.readouterr().out
    assert out.count("rank") == len(files) and f"[{demo.val[0]}]" in out


def test_folder_is_its_skeleton_files_in_name_order(demo, tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    for fd in reversed(demo.val[:4]):
        shutil.copy(demo.raw / f"{fd}.skeleton", folder)
    (folder / "notes.txt").write_text("not a recording")
    records = run_predict(["--checkpoint", demo.checkpoints["j"], folder, "--top-k", NUM_CLASSES], tmp_path)
    assert [r["sample"] for r in records] == demo.val[:4]
    assert [r["input"] for r in records] == [str(folder / f"{fd}.skeleton") for fd in demo.val[:4]]
    assert_equals_test(records, demo.scores["j"])


def test_pickle_samples(demo, tmp_path):
    chosen = [demo.val[5], demo.val[2]]
    records = run_predict(["--checkpoint", demo.checkpoints["j"], demo.ann, "--sample", chosen[0], "--sample",
                           chosen[1], "--top-k", NUM_CLASSES], tmp_path)
    # annotation order (sorted frame_dirs in convert-ntu's pickle), not the order of --sample
    assert [r["sample"] for r in records] == sorted(chosen)
    assert all(r["input"] == str(demo.ann) for r in records)
    for record in records:
        np.testing.assert_allclose(probs_of(record), demo.scores["j"][record["sample"]], rtol=0, atol=1e-6)
    everything = run_predict(["--checkpoint", demo.checkpoints["j"], demo.ann], tmp_path, "all.json")
    annotations = pickle.loads(demo.ann.read_bytes())["annotations"]
    assert [r["sample"] for r in everything] == [a["frame_dir"] for a in annotations]
    assert all(len(r["topk"]) == 5 for r in everything)


def test_kinetics_json_clip_gives_msg3d_tests_probabilities(tmp_path):
    """A Kinetics-skeleton clip with a PYSKL-style checkpoint (facts from options): the same as
    `msg3d test` on a store derived from the converted clip under MS-G3D's convention."""
    write_kinetics_release(tmp_path / "k", num_classes=3, train_per_class=1, val_per_class=1)
    clips = sorted((tmp_path / "k" / "kinetics_val").glob("*.json"))
    hp = {"model": TINY_MODEL, "clip_len": 300, "test_clips": 1}
    torch.manual_seed(0)
    model = build_model(3, layout="openpose", **TINY_MODEL)
    torch.nn.init.normal_(model.cls_head.fc_cls.weight, std=3.0)  # scores far from uniform
    ckpt = tmp_path / "k.pth"
    torch.save({"meta": {"config": "model = dict(type='RecognizerGCN')"}, "state_dict": model.state_dict()}, ckpt)

    anns = [read_clip(clip) for clip in clips]
    data = {"split": {"val": [a["frame_dir"] for a in anns]}, "annotations": anns}
    store = derive_annotations(data, tmp_path / "store", "openpose", "j", features="msg3d-kinetics", num_classes=3,
                               progress=False)
    evaluate_checkpoint(store, "val", ckpt, tmp_path / "s.pkl", num_workers=0, device="cpu", hparams=hp,
                        progress_seconds=1e9)
    scores = dict(zip([a["frame_dir"] for a in anns], pickle.loads((tmp_path / "s.pkl").read_bytes())))

    records = run_predict(["--checkpoint", ckpt, "--layout", "openpose", "--modality", "j", "--features",
                           "msg3d-kinetics", "--hparams-json", json.dumps(hp), *clips, "--top-k", 3], tmp_path)
    assert [r["sample"] for r in records] == [a["frame_dir"] for a in anns]
    for record in records:
        np.testing.assert_allclose(probs_of(record, 3), scores[record["sample"]], rtol=0, atol=1e-6)
    assert np.ptp([probs_of(r, 3) for r in records], axis=0).max() > 1e-3


# --------------------------------------------------------------------------- a long recording


def test_window_bounds():
    assert window_bounds(70, 30, 20) == [(0, 30), (20, 50), (40, 70)]
    assert window_bounds(75, 30, 20) == [(0, 30), (20, 50), (40, 70)]  # frames 70-74: the buffer has not moved on
    assert window_bounds(12, 30, 5) == [(0, 12)]
    with pytest.raises(ValueError, match="--window and --stride must be >= 1"):
        window_bounds(10, 0, 1)


def test_windows_of_a_long_recording_are_predicted_as_recordings_of_their_own(demo, tmp_path, capsys):
    # one person waving, no spurious body and no empty frame (see msg3d.data.demo.recording), so
    # that a file of a window's frames converts to exactly those frames
    frames = recording(0, 1, 1, 1, 1, 120, 1)
    long_file = tmp_path / "S001C001P001R001A001.skeleton"
    long_file.write_text(format_skeleton_file(frames))
    records = run_predict(["--checkpoint", demo.checkpoints["j"], long_file, "--window", 50, "--stride", 30,
                           "--top-k", NUM_CLASSES], tmp_path)
    assert [(r["start"], r["end"]) for r in records] == [(0, 50), (30, 80), (60, 110)]
    assert all(r["sample"] == "S001C001P001R001A001" and r["input"] == str(long_file) for r in records)
    timeline = capsys.readouterr().out
    assert "120 frames, 3 window(s) of 50 frames every 30" in timeline
    for record in records:
        part = tmp_path / f"window{record['start']}" / "S001C001P001R001A001.skeleton"
        part.parent.mkdir()
        part.write_text(format_skeleton_file(frames[record["start"]:record["end"]]))
        alone = run_predict(["--checkpoint", demo.checkpoints["j"], part, "--top-k", NUM_CLASSES], tmp_path)
        np.testing.assert_array_equal(probs_of(record), probs_of(alone[0]))
        assert f"{record['start']:>6} {record['end']:>6}  " in timeline
    assert np.ptp([probs_of(r) for r in records], axis=0).max() > 1e-4  # the windows see different motion


# --------------------------------------------------------------------------- fusion, class names


def test_fusion_is_the_weighted_mean_of_the_streams(demo, tmp_path):
    files = [demo.raw / f"{fd}.skeleton" for fd in demo.val[:5]]
    records = run_predict(["--checkpoint", demo.checkpoints["j"], "--checkpoint", demo.checkpoints["b"],
                           "--weights", "2,1", *files, "--top-k", NUM_CLASSES], tmp_path)
    for record in records:
        streams = {m: demo.scores[m][record["sample"]][None] for m in ("j", "b")}
        fused = fuse_scores(streams, {"j": 2.0, "b": 1.0})[0] / 3  # msg3d fuse's score, as a probability
        np.testing.assert_allclose(probs_of(record), fused, rtol=0, atol=1e-6)
        assert probs_of(record).sum() == pytest.approx(1.0, abs=1e-9)
    # the b stream changes the result: the fusion is not one stream's scores
    j_only = np.array([demo.scores["j"][r["sample"]] for r in records])
    assert np.abs(np.array([probs_of(r) for r in records]) - j_only).max() > 1e-4


def test_class_names_of_ntu60(demo, tmp_path, capsys):
    """PYSKL's compact reference model has 60 classes: NTU RGB+D 60's names, and its facts come from options."""
    records = run_predict(["--checkpoint", NTU_SMALL, "--layout", "nturgb+d", "--modality", "j", "--hparams-json",
                           SMALL_HP, demo.raw / f"{demo.val[0]}.skeleton", "--top-k", 4], tmp_path)
    names = class_names("ntu60")
    (record,) = records
    assert len(record["topk"]) == 4
    assert [item["name"] for item in record["topk"]] == [names[item["label"]] for item in record["topk"]]
    out = capsys.readouterr().out
    for item in record["topk"]:
        assert f"{item['prob']:7.4f}  {label_text(item['label'], names)}" in out  # e.g. "A023 hand waving"


def test_top_k_is_capped_and_names_fall_back_to_numbers(demo, tmp_path):
    (record,) = run_predict(["--checkpoint", demo.checkpoints["j"], demo.raw / f"{demo.val[0]}.skeleton",
                             "--top-k", 50], tmp_path)
    assert len(record["topk"]) == NUM_CLASSES  # 5 classes: no names known
    assert [item["name"] for item in record["topk"]] == [str(item["label"]) for item in record["topk"]]


# --------------------------------------------------------------------------- errors


def predict_error(args, capsys):
    """The message of a failing `msg3d predict ARGS` (what follows "msg3d predict: error: ")."""
    assert cli_main(["predict", *map(str, args)]) == 2
    prefix = "msg3d predict: error: "
    err = capsys.readouterr().err
    assert prefix in err, err
    return err.split(prefix, 1)[1].strip()


def test_malformed_file_gives_the_conversions_error(demo, tmp_path, capsys):
    lines = (demo.raw / f"{demo.val[0]}.skeleton").read_text().splitlines(keepends=True)
    lines[8] = " ".join(lines[8].split()[:11]) + "\n"  # a joint line with 11 of its 12 fields
    bad = tmp_path / "S001C001P003R001A001.skeleton"
    bad.write_text("".join(lines))
    with pytest.raises(SkeletonFormatError) as conversion:
        convert_file(bad)
    assert "line 9" in str(conversion.value) and str(bad) in str(conversion.value)
    message = predict_error(["--checkpoint", demo.checkpoints["j"], bad], capsys)
    assert message == str(conversion.value)


def test_recording_without_bodies_is_named(demo, capsys):
    empty = demo.raw / f"{EMPTY_NAME}.skeleton"
    message = predict_error(["--checkpoint", demo.checkpoints["j"], empty], capsys)
    assert message == f"{empty}: no body to predict from: no body in any frame"


def test_layout_that_does_not_fit_the_input_is_refused(demo, tmp_path, capsys):
    raw = demo.raw / f"{demo.val[0]}.skeleton"
    message = predict_error(["--checkpoint", COCO_SMALL, "--layout", "coco", "--modality", "j", "--hparams-json",
                             SMALL_HP, raw], capsys)
    assert message.startswith(f"{raw}: {COCO_SMALL} does not fit this input: layout 'coco' needs 2D")
    assert f"but {demo.val[0]} has 3D (C=3) keypoints with 25 joints" in message

    write_kinetics_release(tmp_path / "k", num_classes=3, train_per_class=1, val_per_class=1)
    clip = sorted((tmp_path / "k" / "kinetics_val").glob("*.json"))[0]
    message = predict_error(["--checkpoint", demo.checkpoints["j"], clip], capsys)
    assert f"{demo.checkpoints['j']} does not fit this input: layout 'nturgb+d' needs 3D (C=3) keypoints with 25 " \
           "joints" in message and "2D (C=2 + keypoint_score) keypoints with 18 joints" in message


def test_checkpoint_that_does_not_fit_its_facts_is_refused(demo, capsys):
    raw = demo.raw / f"{demo.val[0]}.skeleton"
    message = predict_error(["--checkpoint", NTU_SMALL, "--layout", "coco", "--modality", "j", "--hparams-json",
                             SMALL_HP, raw], capsys)
    assert message == f"{NTU_SMALL} is for a 25-joint layout, but layout 'coco' has 17 joints"
    # PYSKL's full-size widths by default: the compact model does not load, and the error says what to give
    message = predict_error(["--checkpoint", NTU_SMALL, "--layout", "nturgb+d", "--modality", "j", raw], capsys)
    assert message.startswith(f"{NTU_SMALL}: the given state_dict does not match the model")
    assert "shape mismatches" in message and "unless --hparams / --hparams-json give others" in message


def test_missing_and_contradicting_facts(demo, capsys):
    raw = demo.raw / f"{demo.val[0]}.skeleton"
    message = predict_error(["--checkpoint", NTU_SMALL, raw], capsys)
    assert message == (f"{NTU_SMALL} records no training config (PYSKL's checkpoints do not), so its layout "
                       "(nturgb+d, coco, openpose) and modality (j, b, jm, bm) must be given: --layout --modality")
    message = predict_error(["--checkpoint", NTU_SMALL, "--layout", "nturgb+d", raw], capsys)
    assert message.endswith("must be given: --modality")
    ours = demo.checkpoints["j"]
    message = predict_error(["--checkpoint", ours, "--modality", "b", raw], capsys)
    assert message == f"{ours} records modality 'j', but modality 'b' was given"
    message = predict_error(["--checkpoint", ours, "--layout", "coco", raw], capsys)
    assert message == f"{ours} records layout 'nturgb+d', but layout 'coco' was given"
    message = predict_error(["--checkpoint", ours, "--hparams-json", "{}", raw], capsys)
    assert message.startswith(f"{ours} records how it is applied; hyper-parameters (--hparams)")


def test_bad_options_and_inputs(demo, tmp_path, capsys):
    ours, raw = demo.checkpoints["j"], demo.raw / f"{demo.val[0]}.skeleton"
    assert predict_error(["--checkpoint", ours, tmp_path / "absent.skeleton"], capsys) == \
        f"input not found: {tmp_path / 'absent.skeleton'}"
    assert predict_error(["--checkpoint", ours, raw, "--sample", "S001"], capsys) == \
        "--sample names samples of an annotation pickle, but no input is one"
    assert predict_error(["--checkpoint", ours, demo.ann, "--sample", "S999C001P001R001A001"], capsys) == \
        f"sample(s) S999C001P001R001A001 not in {demo.ann}"
    assert predict_error(["--checkpoint", ours, "--checkpoint", demo.checkpoints["b"], "--weights", "1,2,3", raw],
                         capsys) == "--weights gives 3 values for 2 models (give one, or one per model)"
    assert "all fusion weights are zero" in predict_error(
        ["--checkpoint", ours, "--checkpoint", demo.checkpoints["b"], "--weights", "0,0", raw], capsys)
    assert predict_error([raw], capsys).startswith("give the models to apply either as --checkpoint")
    assert predict_error(["--checkpoint", ours, "--onnx", "m.onnx", raw], capsys).startswith("give the models")
    assert predict_error(["--checkpoint", ours, "--checkpoint", ours, raw], capsys) == f"model(s) given twice: {ours}"
    assert predict_error(["--checkpoint", ours, raw, "--stride", "3"], capsys) == "--stride needs --window"
    assert predict_error(["--checkpoint", ours, raw, "--top-k", "0"], capsys) == "--top-k must be >= 1, got 0"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_error(["--checkpoint", ours, empty], capsys) == \
        f"no .skeleton files or Kinetics .json clips in {empty}"


def test_streams_must_share_layout_and_classes(tmp_path):
    other = tmp_path / "five_classes.pth"  # PYSKL-style (no recorded config), 5 classes, the compact widths
    torch.save({"state_dict": build_model(5, layout="nturgb+d", base_channels=24).state_dict()}, other)
    with pytest.raises(ValueError) as excinfo:
        load_streams([NTU_SMALL, other], layout="nturgb+d", modality=["j"], hparams={"model": {"base_channels": 24}})
    assert str(excinfo.value) == (f"the models do not fit together: {NTU_SMALL} is for layout 'nturgb+d' and 60 "
                                  f"classes, {other} for 'nturgb+d' and 5")


def test_predictions_api_matches_the_command(demo):
    streams = load_streams([demo.checkpoints["j"]])
    ((sample, records),) = list(predictions(streams, [demo.raw / f"{demo.val[1]}.skeleton"], k=NUM_CLASSES))
    assert sample.ann["frame_dir"] == demo.val[1] and sample.ann["keypoint"].dtype == np.float16
    np.testing.assert_allclose(probs_of(records[0]), demo.scores["j"][demo.val[1]], rtol=0, atol=1e-6)
