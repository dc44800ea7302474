"""`msg3d test`: output files, metrics vs hand-computed values, PYSKL checkpoints, clear errors."""

import csv
import hashlib
import json
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

import msg3d.engine.test as engine_test
from msg3d.cli import main as cli_main
from msg3d.data.dataset import SkeletonDataset
from msg3d.data.derive import derive_annotations
from msg3d.data.store import open_store
from msg3d.models import build_model
from msg3d.scores import read_scores
from test_engine_common import (
    REFERENCE,
    load_state_dict,
    make_store,
)

pytest_plugins = ["test_engine_common"]  # fixtures: tiny_store, reference_run, one_torch_thread
# every test here needs the trained reference run
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TINY_HP_JSON = json.dumps({"clip_len": REFERENCE["clip_len"], "model": REFERENCE["model"]})


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _pyskl_file(path, state_dict):
    """A checkpoint as mmcv/PYSKL write it: text config in meta, no msg3d entries."""
    meta = {"mmcv_version": "1.7.0", "epoch": 3, "iter": 9, "config": "model = dict(type='RecognizerGCN')"}
    torch.save({"meta": meta, "state_dict": OrderedDict(state_dict),
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def _hand_metrics(probs, labels):
    """PYSKL's metrics written out longhand."""
    pred = probs.argmax(1)
    top1 = np.mean([p == y for p, y in zip(pred, labels)])
    top5 = np.mean([y in np.argsort(row)[-5:] for row, y in zip(probs, labels)])
    classes = sorted(set(labels.tolist()) | set(pred.tolist()))
    recalls = []
    for c in classes:
        n = np.sum(labels == c)
        recalls.append(np.sum((labels == c) & (pred == c)) / n if n else 0.0)
    return top1, top5, np.mean(recalls)


def test_outputs_and_metrics(reference_run, tiny_store, tmp_path):
    ckpt = reference_run / "best.pth"
    scores_path = tmp_path / "j.pkl"
    metrics = engine_test.evaluate_checkpoint(tiny_store, "tiny", ckpt, scores_path, num_clips=3, batch_size=4,
                                              num_workers=0, device="cpu", logits_out=tmp_path / "j_logits.pkl")
    with open(scores_path, "rb") as f:
        scores = pickle.load(f)
    store = open_store(tiny_store)
    val = store.splits["tiny_val"]
    labels, frame_dirs = store.labels[val], store.frame_dirs[val]
    assert isinstance(scores, list) and len(scores) == len(val) == 6
    assert all(isinstance(s, np.ndarray) and s.shape == (3,) and s.dtype == np.float32 for s in scores)
    probs = np.stack(scores)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)

    # the scores are softmax per clip, mean over 3 test clips, in split order
    model = build_model(3, layout="nturgb+d", **REFERENCE["model"]).eval()
    model.load_state_dict(load_state_dict(ckpt))
    ds = SkeletonDataset(tiny_store, "tiny_val", clip_len=REFERENCE["clip_len"], num_clips=3, test_mode=True)
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])  # (6, 3, 2, 16, 25, 3)
        logits = model(x.flatten(0, 1)).reshape(6, 3, 3)
    np.testing.assert_allclose(probs, logits.softmax(-1).mean(1).numpy(), rtol=0, atol=1e-6)
    # --logits: the clip-averaged logits (MS-G3D's ensemble sums them), a stream of its own
    logit_scores, logit_dirs, logit_labels = read_scores(tmp_path / "j_logits.pkl")
    np.testing.assert_allclose(logit_scores, logits.mean(1).numpy(), rtol=0, atol=1e-5)
    assert list(logit_dirs) == list(frame_dirs) and list(logit_labels) == list(labels)
    assert metrics["outputs"]["logits"] == str(tmp_path / "j_logits.pkl")

    top1, top5, mca = _hand_metrics(probs, labels)
    on_disk = json.loads((tmp_path / "j_metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["top1"] == pytest.approx(top1, abs=1e-12) and metrics["top5"] == 1.0
    assert metrics["mean_class_accuracy"] == pytest.approx(mca, abs=1e-12)
    assert metrics["num_samples"] == 6 and metrics["num_clips"] == 3 and metrics["split"] == "tiny_val"
    assert metrics["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert metrics["checkpoint_format"] == "msg3d"
    assert metrics["config"] == json.loads((reference_run / "config.json").read_text())

    assert _read_csv(tmp_path / "j_samples.csv") == [["frame_dir", "label"]] + [
        [f, str(y)] for f, y in zip(frame_dirs, labels)]
    pred = probs.argmax(1)
    cm = np.load(tmp_path / "j_confusion.npy")
    assert cm.shape == (3, 3) and cm.dtype == np.int64
    for t in range(3):
        for p in range(3):
            assert cm[t, p] == np.sum((labels == t) & (pred == p))
    rows = _read_csv(tmp_path / "j_confusion.csv")
    assert rows[0] == ["true\\pred", "0", "1", "2"]
    assert [[int(v) for v in r] for r in rows[1:]] == [[t, *cm[t]] for t in range(3)]
    per_class = _read_csv(tmp_path / "j_per_class.csv")
    assert per_class[0] == ["class", "support", "correct", "accuracy", "name"]
    for c, row in enumerate(per_class[1:]):
        assert [int(row[0]), int(row[1]), int(row[2])] == [c, 2, cm[c, c]]
        assert float(row[3]) == cm[c, c] / 2
        assert row[4] == ""  # 3 classes: no known label list names them


def test_pyskl_checkpoint_round_trip_and_a_class_only_predicted(reference_run, tiny_store, tmp_path):
    # Our checkpoint and the same weights in a PYSKL-style file give identical scores.
    ours = engine_test.evaluate_checkpoint(tiny_store, "tiny", reference_run / "best.pth", tmp_path / "ours.pkl",
                                           num_clips=2, num_workers=0, device="cpu")
    sd = load_state_dict(reference_run / "best.pth")
    assert all(k.startswith(("backbone.", "cls_head.")) for k in sd)
    pyskl = _pyskl_file(tmp_path / "pyskl.pth", sd)
    assert cli_main(["test", "--data", str(tiny_store), "--split", "tiny", "--checkpoint", str(pyskl),
                     "--out", str(tmp_path / "pyskl.pkl"), "--num-clips", "2", "--num-workers", "0",
                     "--device", "cpu", "--hparams-json", TINY_HP_JSON]) == 0
    with open(tmp_path / "ours.pkl", "rb") as f, open(tmp_path / "pyskl.pkl", "rb") as g:
        np.testing.assert_array_equal(np.stack(pickle.load(f)), np.stack(pickle.load(g)))
    theirs = json.loads((tmp_path / "pyskl_metrics.json").read_text())
    assert theirs["checkpoint_format"] == "pyskl" and theirs["config"] is None
    assert theirs["top1"] == ours["top1"]

    # A 4-class head whose class 3 copies class 0 with a higher bias: every class-0 prediction
    # becomes 3, a class with no sample. PYSKL's mean class accuracy counts it as 0.
    store4 = make_store(tmp_path / "j4", num_classes=3)  # same samples ...
    meta = json.loads((store4 / "meta.json").read_text())
    meta["num_classes"] = 4  # ... declared as 4 classes (class 3 has no sample)
    (store4 / "meta.json").write_text(json.dumps(meta))
    sd4 = dict(sd)
    sd4["cls_head.fc_cls.weight"] = torch.cat([sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.weight"][:1]])
    sd4["cls_head.fc_cls.bias"] = torch.cat([sd["cls_head.fc_cls.bias"], sd["cls_head.fc_cls.bias"][:1] + 1.0])
    m4 = engine_test.evaluate_checkpoint(store4, "tiny", _pyskl_file(tmp_path / "p4.pth", sd4), tmp_path / "p4.pkl",
                                         num_clips=2, num_workers=0, device="cpu",
                                         hparams={"clip_len": REFERENCE["clip_len"], "model": REFERENCE["model"]})
    with open(tmp_path / "p4.pkl", "rb") as f:
        probs = np.stack(pickle.load(f))
    pred, labels = probs.argmax(1), open_store(store4).labels[open_store(store4).splits["tiny_val"]]
    assert (pred == 3).any() and not (pred == 0).any() and 3 not in labels
    top1, _, mca = _hand_metrics(probs, labels)
    assert m4["top1"] == pytest.approx(top1, abs=1e-12)
    assert m4["mean_class_accuracy"] == pytest.approx(mca, abs=1e-12)
    # the classes averaged are those in labels or predictions: 0, 1, 2 (labels) and 3 (predicted)
    recall = [np.sum((labels == c) & (pred == c)) / np.sum(labels == c) for c in (0, 1, 2)]
    assert m4["mean_class_accuracy"] == pytest.approx((sum(recall) + 0.0) / 4, abs=1e-12)


def _coco_store(path):
    rng = np.random.default_rng(1)
    anns = []
    for i in range(4):
        kp = rng.uniform(100, 900, (1, 20, 17, 2)).astype(np.float32)
        anns.append({"frame_dir": f"S001C001P{i:03d}R001A001", "label": i % 3, "total_frames": 20, "keypoint": kp,
                     "keypoint_score": rng.uniform(0.5, 1, (1, 20, 17)).astype(np.float32),
                     "img_shape": (1080, 1920)})
    names = [a["frame_dir"] for a in anns]
    return derive_annotations({"split": {"tiny_train": names[:2], "tiny_val": names[2:]}, "annotations": anns},
                              path, "coco", "j", num_classes=3, progress=False)


def test_checkpoint_that_does_not_fit_the_store(reference_run, tiny_store, tmp_path):
    ckpt = reference_run / "best.pth"
    kwargs = dict(num_clips=1, num_workers=0, device="cpu")
    store4 = make_store(tmp_path / "j4", num_classes=4)
    with pytest.raises(ValueError, match=r"best.pth has 3 classes, but the store has 4"):
        engine_test.evaluate_checkpoint(store4, "tiny", ckpt, tmp_path / "s.pkl", **kwargs)
    coco = _coco_store(tmp_path / "coco")
    with pytest.raises(ValueError, match=r"trained on layout 'nturgb\+d', but the store has 'coco'"):
        engine_test.evaluate_checkpoint(coco, "tiny", ckpt, tmp_path / "s.pkl", **kwargs)
    # without our config (PYSKL file) the graph's size gives the layout away
    pyskl = _pyskl_file(tmp_path / "p.pth", load_state_dict(ckpt))
    with pytest.raises(ValueError, match=r"25-joint layout, but the store's layout 'coco' has 17 joints"):
        engine_test.evaluate_checkpoint(coco, "tiny", pyskl, tmp_path / "s.pkl", **kwargs)
    with pytest.raises(ValueError, match="carries its training config; --hparams is only for"):
        engine_test.evaluate_checkpoint(tiny_store, "tiny", ckpt, tmp_path / "s.pkl", hparams={"model": {}}, **kwargs)
    assert not (tmp_path / "s.pkl").exists()


def test_missing_inputs_are_clear_errors(reference_run, tiny_store, tmp_path, capsys):
    base = ["test", "--out", str(tmp_path / "s.pkl"), "--device", "cpu", "--num-workers", "0"]
    assert cli_main(base + ["--data", str(tiny_store), "--split", "tiny",
                            "--checkpoint", str(tmp_path / "no.pth")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert cli_main(base + ["--data", str(tmp_path / "nostore"), "--split", "tiny",
                            "--checkpoint", str(reference_run / "best.pth")]) == 2
    assert "store not found" in capsys.readouterr().err
    assert cli_main(base + ["--data", str(tiny_store), "--split", "xsub",
                            "--checkpoint", str(reference_run / "best.pth")]) == 2
    err = capsys.readouterr().err
    assert "split 'xsub'" in err and "tiny_train, tiny_val" in err


def test_pyskl_reference_weights_through_msg3d_test(tmp_path):
    """PYSKL's own state_dict (fixture) in a PYSKL-style .pth, full-size model, through `msg3d test`:
    the scores are softmax of the logits PYSKL computed for the same input (REFERENCE §12)."""
    from conftest import FIXTURES, shared_file
    from msg3d.data.store import StoreWriter

    ref = torch.load(shared_file(FIXTURES / "pyskl_msg3d_ntu_ref.pt"), map_location="cpu", weights_only=True)
    x = ref["input"].numpy()  # (2, 2, 64, 25, 3): the backbone's input, i.e. already normalised clips
    store = tmp_path / "store"
    with StoreWriter(store, num_joints=25, channels=3) as writer:
        for i, sample in enumerate(x):
            writer.append(f"S001C001P001R001A{i + 1:03d}", i, sample)
        names = [f"S001C001P001R001A{i + 1:03d}" for i in range(len(x))]
        writer.finish(splits={"ref_val": names}, meta={"layout": "nturgb+d", "modality": "j", "num_classes": 60})
    ckpt = _pyskl_file(tmp_path / "pyskl.pth", ref["state_dict"])
    # one test clip of 64 frames of a 64-frame sample is the sample itself (UniformSample, §4.3)
    metrics = engine_test.evaluate_checkpoint(store, "ref", ckpt, tmp_path / "ref.pkl", num_clips=1, num_workers=0,
                                              device="cpu", hparams={"clip_len": 64})
    with open(tmp_path / "ref.pkl", "rb") as f:
        probs = np.stack(pickle.load(f))
    np.testing.assert_allclose(probs, ref["logits"].softmax(-1).numpy(), rtol=0, atol=1e-5)
    assert metrics["model"] == {"base_channels": 96, "num_gcn_scales": 13, "num_g3d_scales": 6}
    assert metrics["checkpoint_format"] == "pyskl" and metrics["num_samples"] == 2


def test_checkpoint_with_nan_weights_is_refused_and_nothing_written(tiny_store, tmp_path, capsys):
    """A diverged run's NaN weights give NaN scores, whose argmax/argsort metrics would look real."""
    torch.manual_seed(0)
    model = build_model(3, layout="nturgb+d", in_channels=3, **REFERENCE["model"])
    sd = model.state_dict()
    sd["cls_head.fc_cls.weight"][1:] = float("nan")  # every sample, whatever its class
    ckpt = _pyskl_file(tmp_path / "diverged.pth", sd)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        engine_test.evaluate_checkpoint(tiny_store, "tiny", ckpt, out / "s.pkl", num_clips=2, num_workers=0,
                                        device="cpu", hparams={"clip_len": REFERENCE["clip_len"],
                                                               "model": REFERENCE["model"]})
    assert str(info.value) == (f"checkpoint {ckpt} gives non-finite scores (NaN or inf) for 6 of 6 samples "
                               "(first: S001C001P012R001A001) (NaN weights? diverged run?); nothing written")
    assert cli_main(["test", "--data", str(tiny_store), "--split", "tiny", "--checkpoint", str(ckpt),
                     "--out", str(out / "s.pkl"), "--num-clips", "1", "--num-workers", "0", "--device", "cpu",
                     "--hparams-json", TINY_HP_JSON]) == 2
    assert "non-finite scores (NaN or inf) for 6 of 6 samples" in capsys.readouterr().err
    assert not out.exists()


def test_hostile_checkpoint_is_refused_before_its_code_runs(tiny_store, tmp_path, capsys):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch '{tmp_path / 'MARK'}'",)

    model = build_model(3, layout="nturgb+d", in_channels=3, **REFERENCE["model"])
    ckpt = tmp_path / "evil.pth"
    torch.save({"meta": {"hook": Payload()}, "state_dict": model.state_dict()}, ckpt)
    assert cli_main(["test", "--data", str(tiny_store), "--split", "tiny", "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "out" / "s.pkl"), "--num-workers", "0", "--device", "cpu",
                     "--hparams-json", TINY_HP_JSON]) == 2
    assert f"msg3d test: error: {ckpt}: not a loadable PyTorch checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]


def _store_from_known_annotations(path, sha256):
    """The tiny store's samples, derived from annotations of source sha ``sha256``, with an extra split
    ``mixed_val``: 3 samples of ``tiny_train`` and 2 of ``tiny_val``."""
    from test_engine_common import tiny_annotations

    annotations = tiny_annotations()
    split = annotations["split"]
    split["mixed_val"] = split["tiny_train"][:3] + split["tiny_val"][:2]
    return derive_annotations(annotations, path, "nturgb+d", "j", source={"name": "tiny.pkl", "sha256": sha256},
                              progress=False)


def _checkpoint_trained_on(reference_run, store, path, **hparams):
    """best.pth of the reference run, recorded as trained on ``store``'s ``tiny_train`` (and with
    ``hparams`` changed in its config)."""
    ckpt = torch.load(reference_run / "best.pth", weights_only=True)
    config = ckpt["meta"]["config"]
    config["data"].update(meta=open_store(store).meta, train_split="tiny_train")
    config["hparams"].update(hparams)
    torch.save(ckpt, path)
    return path


def test_testing_on_samples_the_checkpoint_was_trained_on_warns_with_the_count(reference_run, tmp_path, capsys):
    sha = "ab" * 32
    store = _store_from_known_annotations(tmp_path / "store", sha)
    ckpt = _checkpoint_trained_on(reference_run, store, tmp_path / "xsub.pth")
    kwargs = dict(num_clips=1, num_workers=0, device="cpu")
    metrics = engine_test.evaluate_checkpoint(store, "mixed", ckpt, tmp_path / "mixed.pkl", **kwargs)
    assert capsys.readouterr().err.split("\n", 1)[0] + "\n" == (
        f"msg3d test: warning: 3 of the 5 samples of split 'mixed_val' are in split 'tiny_train' that {ckpt} was "
        f"trained on (same annotations, sha256 abababababab...): its accuracy on them is no test result\n")
    overlap = {"train_split": "tiny_train", "count": 3, "num_test_samples": 5, "source_sha256": sha}
    assert metrics["train_overlap"] == overlap
    assert json.loads((tmp_path / "mixed_metrics.json").read_text())["train_overlap"] == overlap
    # the checkpoint's own val split: counted, nothing to warn about
    metrics = engine_test.evaluate_checkpoint(store, "tiny", ckpt, tmp_path / "val.pkl", **kwargs)
    assert metrics["train_overlap"] == dict(overlap, count=0, num_test_samples=6)
    assert "warning" not in capsys.readouterr().err
    # annotations of another source (their split names may mean other samples), or unknown: not counted
    other = _store_from_known_annotations(tmp_path / "other", "cd" * 32)
    metrics = engine_test.evaluate_checkpoint(other, "mixed", ckpt, tmp_path / "other.pkl", **kwargs)
    assert metrics["train_overlap"] is None and "warning" not in capsys.readouterr().err
    metrics = engine_test.evaluate_checkpoint(store, "mixed", reference_run / "best.pth", tmp_path / "ref.pkl", **kwargs)
    assert metrics["train_overlap"] is None  # its store has no source sha256


def test_amp_and_num_workers_come_from_the_checkpoint_unless_given(reference_run, tiny_store, tmp_path, monkeypatch):
    used = []
    real_predict = engine_test.predict

    def recording_predict(model, loader, device, amp=None, **kwargs):
        used.append((amp, loader.num_workers))
        return real_predict(model, loader, device, amp, **kwargs)

    monkeypatch.setattr(engine_test, "predict", recording_predict)
    ckpt = _checkpoint_trained_on(reference_run, tiny_store, tmp_path / "bf16.pth", amp="bf16", num_workers=0)
    metrics = engine_test.evaluate_checkpoint(tiny_store, "tiny", ckpt, tmp_path / "a.pkl", num_clips=1, device="cpu")
    assert (metrics["amp"], metrics["num_workers"], used.pop()) == ("bf16", 0, ("bf16", 0))
    assert cli_main(["test", "--data", str(tiny_store), "--split", "tiny", "--checkpoint", str(ckpt), "--out",
                     str(tmp_path / "b.pkl"), "--num-clips", "1", "--device", "cpu", "--amp", "none",
                     "--num-workers", "1"]) == 0
    assert used.pop() == (None, 1)
    assert json.loads((tmp_path / "b_metrics.json").read_text())["amp"] == "none"
    # a PYSKL checkpoint has no config: the --hparams given with it decide
    pyskl = _pyskl_file(tmp_path / "pyskl.pth", load_state_dict(reference_run / "best.pth"))
    engine_test.evaluate_checkpoint(tiny_store, "tiny", pyskl, tmp_path / "c.pkl", num_clips=1, device="cpu",
                                    hparams={"clip_len": REFERENCE["clip_len"], "model": REFERENCE["model"],
                                             "amp": "bf16", "num_workers": 0})
    assert used.pop() == ("bf16", 0)


def test_max_samples_tests_the_first_n_samples_of_a_full_run(reference_run, tiny_store, tmp_path, capsys):
    ckpt = reference_run / "best.pth"
    kwargs = dict(num_clips=2, batch_size=4, num_workers=0, device="cpu")
    full = engine_test.evaluate_checkpoint(tiny_store, "tiny", ckpt, tmp_path / "full.pkl",
                                           logits_out=tmp_path / "full_logits.pkl", **kwargs)
    assert (full["num_samples"], full["split_samples"], full["max_samples"]) == (6, 6, None)
    capsys.readouterr()
    # 5 of 6 with batches of 4: the last batch (1 sample) differs from the full run's (2 samples)
    assert cli_main(["test", "--data", str(tiny_store), "--split", "tiny", "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "five.pkl"), "--logits", str(tmp_path / "five_logits.pkl"),
                     "--num-clips", "2", "--batch-size", "4", "--num-workers", "0", "--device", "cpu",
                     "--max-samples", "5"]) == 0
    out = capsys.readouterr()
    assert "msg3d test: --max-samples 5: testing the first 5 of the 6 samples of split 'tiny_val' only" in out.err
    assert out.out.rstrip().endswith("(first 5 samples of 6, --max-samples 5)")

    for stem in ("", "_logits"):
        probs, frame_dirs, labels = read_scores(tmp_path / f"five{stem}.pkl")
        all_probs, all_dirs, all_labels = read_scores(tmp_path / f"full{stem}.pkl")
        assert probs.shape == (5, 3) and frame_dirs == all_dirs[:5]
        np.testing.assert_array_equal(labels, all_labels[:5])
        np.testing.assert_allclose(probs, all_probs[:5], rtol=0, atol=1e-6)
    probs, _, labels = read_scores(tmp_path / "five.pkl")
    metrics = json.loads((tmp_path / "five_metrics.json").read_text())
    assert (metrics["num_samples"], metrics["split_samples"], metrics["max_samples"]) == (5, 6, 5)
    top1, top5, mca = _hand_metrics(probs, labels)
    assert metrics["top1"] == pytest.approx(top1, abs=1e-12) and metrics["top5"] == pytest.approx(top5, abs=1e-12)
    assert metrics["mean_class_accuracy"] == pytest.approx(mca, abs=1e-12)
    assert np.load(tmp_path / "five_confusion.npy").sum() == 5
    assert len(_read_csv(tmp_path / "five_samples.csv")) == 1 + 5

    # more than the split holds: all of it, the option recorded, nothing said about a cut
    many = engine_test.evaluate_checkpoint(tiny_store, "tiny", ckpt, tmp_path / "many.pkl", max_samples=100, **kwargs)
    assert (many["num_samples"], many["split_samples"], many["max_samples"]) == (6, 6, 100)
    assert many["top1"] == full["top1"] and "--max-samples" not in capsys.readouterr().err

    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"--max-samples must be >= 1, got {bad}"):
            engine_test.evaluate_checkpoint(tiny_store, "tiny", ckpt, tmp_path / "bad" / "s.pkl", max_samples=bad,
                                            **kwargs)
    assert cli_main(["test", "--data", str(tiny_store), "--split", "tiny", "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "bad" / "s.pkl"), "--device", "cpu", "--max-samples", "0"]) == 2
    assert "msg3d test: error: --max-samples must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_predict_fills_one_array_with_the_items_the_loader_yields(reference_run, tiny_store):
    """``predict`` sizes its outputs by the sampler: with drop_last the loader yields fewer items, and
    the scores are exactly those (each row the same as when the samples are tested one by one)."""
    from torch.utils.data import DataLoader

    from msg3d.engine.evaluate import predict

    model = build_model(3, layout="nturgb+d", **REFERENCE["model"])
    model.load_state_dict(load_state_dict(reference_run / "best.pth"))
    ds = SkeletonDataset(tiny_store, "tiny_val", clip_len=REFERENCE["clip_len"], num_clips=2, test_mode=True)
    cpu = torch.device("cpu")
    probs, logits = predict(model, DataLoader(ds, batch_size=4, drop_last=True), cpu, with_logits=True)
    one_by_one, one_logits = predict(model, DataLoader(ds, batch_size=1), cpu, with_logits=True)
    assert probs.shape == logits.shape == (4, 3) and one_by_one.shape == (6, 3)
    assert probs.dtype == logits.dtype == np.float32
    np.testing.assert_allclose(probs, one_by_one[:4], rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits, one_logits[:4], rtol=0, atol=1e-5)
    np.testing.assert_allclose(one_by_one.sum(1), 1, atol=1e-6)
