"""Prepared annotations (`msg3d derive ANN.pkl DIR --prepare`, then `msg3d derive DIR STORE`): the
same stores as derived from the pickle, one shard in memory at a time, and clear refusals."""

import json
import pickle
import weakref

import numpy as np
import pytest
from conftest import REALDATA, shared_file

import msg3d.data.derive as derive_module
from msg3d.cli import main as cli_main
from msg3d.data.derive import derive, derive_prepared, prepare_annotations, read_prepared
from msg3d.data.modality import MODALITIES
from msg3d.data.ntu_raw import convert_ntu
from msg3d.data.store import open_store
from msg3d.fileio import sha256_file


def ntu_like(n=9, seed=0):
    """3D float16 samples of 1 or 2 persons, as convert-ntu writes them, with NTU60 split names."""
    rng = np.random.default_rng(seed)
    anns = []
    for i in range(n):
        keypoint = rng.normal(size=(1 + i % 2, int(rng.integers(5, 30)), 25, 3)).astype(np.float16)
        anns.append({"frame_dir": f"S001C001P{i:03d}R001A001", "label": i % 5, "keypoint": keypoint,
                     "total_frames": keypoint.shape[1]})
    names = [a["frame_dir"] for a in anns]
    return {"split": {"xsub_train": names[:6], "xsub_val": names[6:]}, "annotations": anns}


def coco_like(seed=0):
    """2D samples in the variants PYSKL's pipeline takes: img_shape as Python or numpy integers or
    absent, the score packed as channel 3, integer pixels; three persons in one."""
    rng = np.random.default_rng(seed)

    def sample(i, persons=1, packed=False, integer=False, **extra):
        keypoint = rng.uniform(0, 480, size=(persons, 12, 17, 2))
        score = rng.uniform(size=(persons, 12, 17))
        ann = {"frame_dir": f"V{i}", "label": i % 3, "total_frames": 12, **extra}
        if packed:
            ann["keypoint"] = np.concatenate([keypoint, score[..., None]], axis=-1).astype(np.float32)
        else:
            ann["keypoint"] = keypoint.astype(np.int32 if integer else np.float16)
            ann["keypoint_score"] = score.astype(np.float16)
        return ann

    anns = [sample(0, img_shape=(480, 640)), sample(1, persons=3, img_shape=(np.int64(480), np.int64(640))),
            sample(2), sample(3, packed=True, img_shape=(480, 640)), sample(4, integer=True, img_shape=(480, 640))]
    return {"split": {"train": ["V0", "V2", "V4"], "val": ["V1", "V3"]}, "annotations": anns}


def kinetics_like(seed=0):
    rng = np.random.default_rng(seed)
    anns = [{"frame_dir": f"k{i}", "label": i, "total_frames": 30,
             "keypoint": rng.uniform(-0.5, 0.5, (2, 30, 18, 2)).astype(np.float32),
             "keypoint_score": rng.uniform(size=(2, 30, 18)).astype(np.float32)} for i in range(4)]
    return {"split": {"train": ["k0", "k1"], "val": ["k2", "k3"]}, "annotations": anns, "num_classes": 400}


def write_pickle(path, data):
    path.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def assert_same_store(a, b):
    """Two store folders with the same content, byte for byte (index.npz: its arrays, since the zip
    records when it was written)."""
    for name in ("data.npy", "splits.json", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    with np.load(a / "index.npz") as x, np.load(b / "index.npz") as y:
        assert x.files == y.files
        for key in x.files:
            assert x[key].dtype == y[key].dtype and np.array_equal(x[key], y[key]), key


@pytest.mark.parametrize(("data", "layout", "features"), [
    (ntu_like(), "nturgb+d", "pyskl"),
    (coco_like(), "coco", "pyskl"),
    (kinetics_like(), "openpose", "msg3d-kinetics"),
])
def test_prepared_stores_equal_the_stores_derived_from_the_pickle(tmp_path, data, layout, features):
    ann = write_pickle(tmp_path / "ann.pkl", data)
    prepared = prepare_annotations(ann, tmp_path / "prepared", layout, shard_bytes=2000)
    index = read_prepared(prepared)
    assert len(index["shards"]) > 1 and index["num_samples"] == len(data["annotations"])
    assert index["source"] == {"name": "ann.pkl", "sha256": sha256_file(ann)} and index["layout"] == layout
    for modality in MODALITIES:
        direct = derive(ann, tmp_path / "direct" / modality, layout, modality, features=features, progress=False)
        store = derive_prepared(prepared, tmp_path / "store" / modality, modality, features=features,
                                progress=False)
        assert_same_store(direct, store)
    assert open_store(store).meta["num_classes"] == data.get("num_classes", 5 if layout == "nturgb+d" else 3)


def test_real_files_give_the_same_stores_both_ways(tmp_path):
    ann = tmp_path / "ntu60.pkl"
    convert_ntu(shared_file(REALDATA), ann, "ntu60", jobs=1)
    prepared = prepare_annotations(ann, tmp_path / "prepared", "nturgb+d", shard_bytes=100_000)
    assert len(read_prepared(prepared)["shards"]) > 1
    for modality in MODALITIES:
        assert_same_store(derive(ann, tmp_path / "direct" / modality, "nturgb+d", modality, progress=False),
                          derive_prepared(prepared, tmp_path / modality, modality, progress=False))


def test_one_shard_in_memory_at_a_time(tmp_path, monkeypatch):
    """When a shard is read, the samples of the earlier ones are gone but for the last one or two
    (held by the loop that wrote them); a reader that kept them would hold 39 by the last shard."""
    prepared = prepare_annotations(write_pickle(tmp_path / "ann.pkl", ntu_like(40)), tmp_path / "p", "nturgb+d",
                                   shard_bytes=20_000)
    alive, earlier = [], []
    real = derive_module.safe_pickle.load

    def tracked(path, what):
        earlier.append(sum(ref() is not None for ref in alive))
        samples = real(path, what)
        alive.extend(weakref.ref(ann["keypoint"]) for ann in samples)
        return samples

    monkeypatch.setattr(derive_module.safe_pickle, "load", tracked)
    derive_prepared(prepared, tmp_path / "store", "bm", progress=False)
    assert len(earlier) == len(read_prepared(prepared)["shards"]) >= 4 and max(earlier) <= 2


def test_cli_prepares_once_and_derives_each_modality(tmp_path, capsys):
    ann = write_pickle(tmp_path / "ann.pkl", ntu_like())
    prepared = tmp_path / "prepared"
    assert cli_main(["derive", str(ann), str(prepared), "--layout", "nturgb+d", "--prepare"]) == 0
    assert capsys.readouterr().out == f"wrote {prepared}\n"
    assert cli_main(["derive", str(prepared), str(tmp_path / "b"), "--layout", "nturgb+d", "--modality", "b"]) == 0
    assert "derive b: 9/9 samples" in capsys.readouterr().err
    assert cli_main(["derive", str(prepared), str(tmp_path / "jm"), "--modality", "jm"]) == 0  # its layout, recorded
    meta = open_store(tmp_path / "jm").meta
    assert meta["source"] == {"name": "ann.pkl", "sha256": sha256_file(ann)} and meta["layout"] == "nturgb+d"


@pytest.mark.parametrize(("args", "message"), [
    (["ANN", "OUT", "--layout", "nturgb+d", "--prepare", "--modality", "j"], "--prepare writes the checked samples"),
    (["ANN", "OUT", "--layout", "nturgb+d", "--prepare", "--features", "pyskl"], "leave out --modality and --features"),
    (["ANN", "OUT", "--layout", "nturgb+d"], "--modality is required (or --prepare)"),
    (["ANN", "OUT", "--modality", "j"], "--layout is required with an annotation pickle"),
    (["ANN", "OUT", "--prepare"], "--layout is required with an annotation pickle"),
    (["PREPARED", "OUT", "--modality", "j", "--num-classes", "60"], "whose number of classes was set when"),
    (["PREPARED", "OUT", "--modality", "j", "--layout", "coco"], "was prepared for layout 'nturgb+d', not 'coco'"),
])
def test_cli_refuses_options_that_do_not_fit(tmp_path, capsys, args, message):
    ann = write_pickle(tmp_path / "ann.pkl", ntu_like())
    prepared = prepare_annotations(ann, tmp_path / "prepared", "nturgb+d")
    words = [{"ANN": str(ann), "PREPARED": str(prepared), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    assert cli_main(["derive", *words]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msg3d derive: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_before_writing(tmp_path):
    ann = write_pickle(tmp_path / "ann.pkl", ntu_like())
    with pytest.raises(ValueError, match="layout 'coco' needs 2D"):
        prepare_annotations(ann, tmp_path / "prepared", "coco")
    bad = ntu_like()
    bad["annotations"][3]["label"] = -1
    with pytest.raises(ValueError, match="(?s)invalid annotation file.*label must be a non-negative integer"):
        prepare_annotations(write_pickle(tmp_path / "bad.pkl", bad), tmp_path / "prepared", "nturgb+d")
    assert not (tmp_path / "prepared").exists()


def test_damaged_prepared_annotations_are_named(tmp_path):
    prepared = prepare_annotations(write_pickle(tmp_path / "ann.pkl", ntu_like()), tmp_path / "p", "nturgb+d",
                                   shard_bytes=2000)
    rebuild = "rebuild it with `msg3d derive ANN.pkl"
    with pytest.raises(FileNotFoundError, match="prepared annotations not found: .*nope"):
        derive_prepared(tmp_path / "nope", tmp_path / "s", "j")
    shard = prepared / read_prepared(prepared)["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{shard}: not a shard of prepared annotations"):
        derive_prepared(prepared, tmp_path / "s", "j", progress=False)
    shard.write_bytes(pickle.dumps([]))
    with pytest.raises(ValueError, match=f"{shard}: damaged shard, index.json says it holds"):
        derive_prepared(prepared, tmp_path / "s", "j", progress=False)
    index = json.loads((prepared / "index.json").read_text())
    (prepared / "index.json").write_text(json.dumps(dict(index, num_samples=1)))
    with pytest.raises(ValueError, match=f"index.json is not an index of msg3d-prepared-annotations .*{rebuild}"):
        derive_prepared(prepared, tmp_path / "s", "j")
    (prepared / "index.json").write_text("{")
    with pytest.raises(ValueError, match=f"not prepared annotations, or damaged: cannot read index.json .*{rebuild}"):
        derive_prepared(prepared, tmp_path / "s", "j")
    assert not (tmp_path / "s").exists()
