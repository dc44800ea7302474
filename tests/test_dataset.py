"""SkeletonDataset against PYSKL's full val/test pipeline outputs, and its sampling contract."""

import os
import re

import numpy as np
import pytest
import torch
from conftest import FIXTURES, REALDATA, shared_file
from torch.utils.data import DataLoader

from msg3d.cli import main as cli_main
from msg3d.data.dataset import SkeletonDataset
from msg3d.data.derive import derive_annotations
from msg3d.data.modality import PreNormalize3D, derive_modality
from msg3d.data.sampling import uniform_sample
from msg3d.data.store import open_store

MODALITIES = ("j", "b", "jm", "bm")
NAMES = ("A", "B", "C")


@pytest.fixture(scope="module")
def ref():
    return torch.load(shared_file(FIXTURES / "pyskl_pipeline_ref.pt"), weights_only=True)


@pytest.fixture(scope="module")
def stores(ref, tmp_path_factory):
    """One store per modality from the fixture's raw 3D samples A, B, C (labels 0, 1, 2)."""
    anns = [{"frame_dir": name, "label": i, "total_frames": ref[name]["input_total_frames"],
             "keypoint": ref[name]["input_keypoint"].numpy()} for i, name in enumerate(NAMES)]
    data = {"split": {"val": list(NAMES), "ac": ["C", "A"]}, "annotations": anns}
    root = tmp_path_factory.mktemp("stores")
    return {m: derive_annotations(data, root / m, "nturgb+d", m, progress=False) for m in MODALITIES}


@pytest.mark.parametrize("modality", MODALITIES)
def test_val_pipeline_matches_pyskl(ref, stores, modality):
    ds = SkeletonDataset(stores[modality], "val", clip_len=100, num_clips=1, test_mode=True)
    assert len(ds) == 3
    for i, name in enumerate(NAMES):
        keypoint, label = ds[i]
        assert keypoint.dtype == torch.float32 and label == i
        np.testing.assert_allclose(keypoint.numpy(), ref[name][f"val_pipeline_{modality}"].numpy(), rtol=0, atol=1e-5)


def test_ten_clip_test_pipeline_matches_pyskl(ref, stores):
    ds = SkeletonDataset(stores["j"], "val", num_clips=10, test_mode=True)
    for i, name in enumerate(NAMES):
        keypoint, _ = ds[i]
        assert keypoint.shape == (10, 2, 100, 25, 3)
        np.testing.assert_allclose(keypoint.numpy(), ref[name]["test_pipeline_j"].numpy(), rtol=0, atol=1e-5)
    assert not ds[2][0][:, 1].any()  # C has one body: the second is zero padding


def test_coco_sample_through_the_dataset(ref, tmp_path):
    r = ref["coco2d"]
    ann = {"frame_dir": "K", "label": 5, "total_frames": 30, "img_shape": tuple(r["img_shape"]),
           "keypoint": r["input_keypoint"].numpy(), "keypoint_score": r["input_keypoint_score"].numpy()}
    store = derive_annotations({"split": {"val": ["K"]}, "annotations": [ann]}, tmp_path / "s", "coco", "b",
                               progress=False)
    keypoint, label = SkeletonDataset(store, "val", test_mode=True)[0]
    expected = r["b"].numpy()[:, uniform_sample(30, 100, 1, test_mode=True)]
    assert label == 5 and keypoint.shape == (1, 2, 100, 17, 3)
    np.testing.assert_allclose(keypoint[0].numpy(), expected, rtol=0, atol=1e-5)


def test_split_order_attributes_and_errors(stores):
    ds = SkeletonDataset(stores["j"], "ac", test_mode=True, repeat=3)
    assert list(ds.frame_dirs) == ["A", "C"]  # annotation order, not the split list's order
    np.testing.assert_array_equal(ds.labels, [0, 2])
    assert ds.num_classes == 3 and ds.layout == "nturgb+d" and len(ds) == 6
    np.testing.assert_array_equal(ds[5][0], ds[1][0])
    assert ds[4][1] == 0 and ds[3][1] == ds[-1][1] == 2
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(ValueError, match="unknown split 'xsub_val'; available splits: ac, val"):
        SkeletonDataset(stores["j"], "xsub_val")


def test_seeded_train_sampling(stores):
    store = open_store(stores["jm"])
    ds = SkeletonDataset(stores["jm"], "val", seed=5)
    other = SkeletonDataset(stores["jm"], "val", seed=5)
    # item j of epoch e comes from default_rng([seed, e, j]), whatever the access order
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        other.set_epoch(epoch)
        reversed_items = {j: other[j][0] for j in (2, 1, 0)}
        for j in range(3):
            n = store.total_frames[j]
            inds = uniform_sample(n, 100, 1, rng=np.random.default_rng([5, epoch, j]))
            expected = np.zeros((1, 2, 100, 25, 3), np.float32)
            expected[0, : store.num_person[j]] = store.sample(j)[:, inds]
            np.testing.assert_array_equal(ds[j][0].numpy(), expected)
            np.testing.assert_array_equal(reversed_items[j], expected)
    ds.set_epoch(0)
    first = ds[0][0]
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0][0])


def test_unseeded_train_sampling_uses_global_rng(stores):
    ds = SkeletonDataset(stores["b"], "val")
    np.random.seed(0)
    a = ds[0][0]
    np.random.seed(0)
    b = ds[0][0]
    c = ds[0][0]
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_seeded_batches_do_not_depend_on_workers(stores):
    ds = SkeletonDataset(stores["j"], "val", seed=1, repeat=4)
    ds.set_epoch(2)
    batches = [torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=w)]) for w in (0, 2)]
    assert torch.equal(batches[0], batches[1])


def test_real_ntu_files_convert_derive_and_sample_like_pyskl(tmp_path):
    # Our convert-ntu -> derive -> dataset vs PYSKL's conversion (fixture) through the same operators.
    shared_file(REALDATA)
    expected = torch.load(shared_file(FIXTURES / "pyskl_ntu_real_ref.pt"), weights_only=True)["expected"]
    ann = tmp_path / "ntu.pkl"
    assert cli_main(["convert-ntu", str(REALDATA), str(ann), "--dataset", "ntu60", "--jobs", "1"]) == 0
    for modality in ("j", "bm"):
        argv = ["derive", str(ann), str(tmp_path / modality), "--layout", "nturgb+d", "--modality", modality]
        assert cli_main(argv) == 0
        store = open_store(tmp_path / modality)
        assert sorted(store.frame_dirs) == sorted(expected)
        for split in store.splits:
            ds = SkeletonDataset(store.path, split, num_clips=10, test_mode=True)
            for i, frame_dir in enumerate(ds.frame_dirs):
                ref = expected[frame_dir]
                seq = derive_modality(PreNormalize3D()(ref["keypoint_float16"].numpy())[0], "nturgb+d", modality)
                want = np.zeros((2, 1000, 25, 3), np.float32)
                want[: len(seq)] = seq[:, uniform_sample(seq.shape[1], 100, 10, test_mode=True)]
                got, label = ds[i]
                assert label == ref["label"]
                np.testing.assert_allclose(got.numpy(), want.reshape(2, 10, 100, 25, 3).swapaxes(0, 1),
                                           rtol=0, atol=1e-4, err_msg=frame_dir)


def test_short_read_names_store_and_sample(tmp_path):
    # data.npy cut short after the dataset opened the store (a copy over it, a full disk)
    rng = np.random.default_rng(0)
    anns = [{"frame_dir": name, "label": i, "total_frames": 8, "keypoint": rng.normal(size=(1, 8, 25, 3))}
            for i, name in enumerate(NAMES)]
    store = derive_annotations({"split": {"val": list(NAMES)}, "annotations": anns}, tmp_path / "j", "nturgb+d",
                               "j", progress=False)
    ds = SkeletonDataset(store, "val", clip_len=4, test_mode=True)
    os.truncate(store / "data.npy", (store / "data.npy").stat().st_size - 4)
    assert ds[1][0].shape == (1, 2, 4, 25, 3)
    with pytest.raises(ValueError, match=f"^{re.escape(str(store))}: corrupt derived store: data.npy is truncated: "
                                         "sample 2 \\(C\\) needs 2400 bytes at offset .*, read 2396"):
        ds[2]
