"""Checkpoint loading (strict, PYSKL format, clear errors) and atomic saving."""

import pickle
import warnings
from collections import OrderedDict

import pytest
import torch

from conftest import FIXTURES, shared_file
from msg3d.checkpoint import load_checkpoint, save_checkpoint
from msg3d.models import build_model


def small_model(num_classes=5, layout="nturgb+d"):
    return build_model(num_classes, layout=layout, base_channels=12, num_gcn_scales=3, num_g3d_scales=2)


@pytest.fixture
def trained_pair():
    """A model with non-default weights and a fresh model of the same architecture."""
    torch.manual_seed(0)
    source = small_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return source, small_model()


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_with_optimizer_and_meta(tmp_path, trained_pair):
    source, target = trained_pair
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    source(torch.randn(2, 2, 8, 25, 3)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "run" / "epoch_1.pth", source, optimizer, meta={"epoch": 1, "iter": 7},
                           best_top1=0.5)
    assert sorted(p.name for p in path.parent.iterdir()) == ["epoch_1.pth"]  # no temp files left
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"meta", "state_dict", "optimizer", "best_top1"}
    assert next(iter(raw["state_dict"])) == "backbone.A"
    others = load_checkpoint(target, path)
    assert_same_state(source, target)
    assert others["meta"] == {"epoch": 1, "iter": 7} and others["best_top1"] == 0.5
    fresh_optimizer = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    fresh_optimizer.load_state_dict(others["optimizer"])


def test_loads_pyskl_format_fixture(ntu_model):
    path = shared_file(FIXTURES / "pyskl_msg3d_ntu_ref.pt")
    others = load_checkpoint(ntu_model, path)
    assert others["meta"]["num_classes"] == 60
    reference = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(ntu_model.state_dict()["cls_head.fc_cls.weight"], reference["cls_head.fc_cls.weight"])


@pytest.fixture(scope="module")
def ntu_model():
    return build_model(60)


def test_bare_state_dict_file_and_dict(tmp_path, trained_pair):
    source, target = trained_pair
    torch.save(source.state_dict(), tmp_path / "bare.pth")
    assert load_checkpoint(target, tmp_path / "bare.pth") == {}
    assert_same_state(source, target)
    assert load_checkpoint(small_model(), source.state_dict()) == {}


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(trained_pair, prefix):
    source, target = trained_pair
    wrapped = OrderedDict((prefix + key, value) for key, value in source.state_dict().items())
    load_checkpoint(target, {"state_dict": wrapped, "meta": {}})
    assert_same_state(source, target)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised by torch's own compile machinery
def test_save_strips_compile_wrapper(tmp_path, trained_pair):
    source, target = trained_pair
    save_checkpoint(tmp_path / "c.pth", torch.compile(source))  # not run, so no compilation cost
    keys = list(torch.load(tmp_path / "c.pth", weights_only=True)["state_dict"])
    assert keys == list(source.state_dict())
    load_checkpoint(target, tmp_path / "c.pth")
    assert_same_state(source, target)


def test_missing_key_is_listed(trained_pair):
    source, target = trained_pair
    state = source.state_dict()
    del state["cls_head.fc_cls.bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\):\n    cls_head\.fc_cls\.bias"):
        load_checkpoint(target, state)


def test_unexpected_key_is_listed(trained_pair):
    source, target = trained_pair
    state = source.state_dict()
    state["backbone.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\):\n    backbone\.extra\.weight"):
        load_checkpoint(target, state)


def test_wrong_shape_is_listed(trained_pair):
    source, _ = trained_pair
    with pytest.raises(ValueError, match=r"cls_head\.fc_cls\.weight: checkpoint \[5, 48\], model \[9, 48\]"):
        load_checkpoint(small_model(num_classes=9), source.state_dict())


def test_other_layout_is_rejected_with_all_problems_listed():
    with pytest.raises(ValueError) as err:
        load_checkpoint(small_model(layout="coco"), small_model().state_dict())
    message = str(err.value)
    assert "backbone.A: checkpoint [25, 25], model [17, 17]" in message
    assert "backbone.data_bn.weight: checkpoint [150], model [102]" in message
    assert "... and" in message  # long lists are truncated


def test_differing_graph_is_an_error_unless_allowed(trained_pair):
    source, target = trained_pair
    state = source.state_dict()
    key = "backbone.gcn3d1.gcn3d.1.gcn3d.1.A"
    state[key] = state[key].clone()
    state[key][0, 0, 0] += 0.5
    with pytest.raises(ValueError, match=r"graph buffers differ.*\n    backbone\.gcn3d1\.gcn3d\.1\.gcn3d\.1\.A: max abs"):
        load_checkpoint(target, state)
    assert not torch.equal(target.state_dict()[key], state[key])  # nothing was loaded
    with pytest.warns(UserWarning, match="using the checkpoint's graphs"):
        load_checkpoint(target, state, allow_graph_mismatch=True)
    assert torch.equal(target.state_dict()[key], state[key])


def test_matching_graph_loads_without_warning(trained_pair):
    source, target = trained_pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(target, source.state_dict())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(small_model(), tmp_path / "nope.pth")


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes\.pth: not a loadable PyTorch checkpoint"):
        load_checkpoint(small_model(), path)


def test_pickle_with_unsafe_content_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "hook": print}, f, protocol=2)
    with pytest.raises(ValueError, match=r"evil\.pth: not a loadable PyTorch checkpoint"):
        load_checkpoint(small_model(), path)


def test_other_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "scores.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match=r"scores\.pth: not a model checkpoint.*got list"):
        load_checkpoint(small_model(), path)
    torch.save({"meta": {}, "scores": [1, 2]}, path)
    with pytest.raises(ValueError, match=r"scores\.pth: not a model checkpoint.*keys \['meta', 'scores'\]"):
        load_checkpoint(small_model(), path)


def test_directory_and_non_tensor_entries_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="is a directory, not a checkpoint file"):
        load_checkpoint(small_model(), tmp_path)
    with pytest.raises(ValueError, match=r"state_dict entries that are not tensors \(1\):\n    backbone\.A"):
        load_checkpoint(small_model(), {"state_dict": {"backbone.A": [[0.0]]}})


def test_save_refuses_reserved_extra_keys(tmp_path, trained_pair):
    with pytest.raises(ValueError, match="state_dict"):
        save_checkpoint(tmp_path / "x.pth", trained_pair[0], state_dict={})
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("numpy_module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_mmcv_meta_with_numpy_values_loads(tmp_path, trained_pair, numpy_module):
    """mmcv's eval hook stores numpy scalars in meta (e.g. best_score); numpy 1.x names its module numpy.core."""
    import numpy as np

    source, target = trained_pair
    path = tmp_path / "released.pth"
    meta = {"hook_msgs": {"best_score": np.float64(0.875), "best_ckpt": "epoch_16.pth"}, "seed": np.int64(7),
            "history": np.arange(3, dtype=np.float32)}
    torch.save({"meta": meta, "state_dict": source.state_dict()}, path, _use_new_zipfile_serialization=False)
    # the legacy format is a plain pickle stream: rename numpy's module as a numpy 1.x writer would
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray\n", numpy_module.encode() + b"\n"))
    others = load_checkpoint(target, path)
    assert_same_state(source, target)
    assert others["meta"]["hook_msgs"]["best_score"] == 0.875 and others["meta"]["seed"] == 7
    assert others["meta"]["history"].tolist() == [0.0, 1.0, 2.0]


class RunsCode:
    """Unpickles by calling ``func(*args)``: a stand-in for a hostile checkpoint's payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("zipfile", [True, False])
def test_hostile_pth_is_refused_before_its_code_runs(tmp_path, trained_pair, zipfile):
    import os
    import subprocess

    marker = tmp_path / "MARK"
    for i, payload in enumerate([RunsCode(os.system, f"touch '{marker}'"),
                                 RunsCode(subprocess.Popen, ["touch", str(marker)]),
                                 RunsCode(eval, f"open({str(marker)!r}, 'w')")]):
        path = tmp_path / f"evil{i}.pth"
        torch.save({"meta": {"hook": payload}, "state_dict": trained_pair[0].state_dict()}, path,
                   _use_new_zipfile_serialization=zipfile)
        with pytest.raises(ValueError, match=rf"evil{i}\.pth: not a loadable PyTorch checkpoint"):
            load_checkpoint(small_model(), path)
        assert not marker.exists()


def test_array_class_called_on_pickled_bytes_is_refused(tmp_path):
    """numpy.ndarray(shape, object dtype, buffer) turns bytes into object pointers (a crash at best): the
    numpy globals that checkpoint meta may use must not let a .pth call the class. Run apart: it may crash."""
    import subprocess
    import sys

    import numpy as np

    path = tmp_path / "forged.pth"
    object_dtype = RunsCode(np.dtype, "O")  # the dtype alone, without the state that torch would refuse
    forged = RunsCode(np.ndarray, (1,), object_dtype, b"\x41" * 8)
    torch.save({"meta": {"x": forged}, "state_dict": {"w": torch.zeros(1)}}, path)
    code = ("import sys\nfrom msg3d.checkpoint import read_checkpoint\n"
            "try:\n    others = read_checkpoint(sys.argv[1])[1]\nexcept ValueError as exc:\n    print(exc)\n"
            "else:\n    print('loaded', repr(others['meta']['x'][0]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "forged.pth: not a loadable PyTorch checkpoint" in done.stdout
    assert "numpy.ndarray called on pickled arguments" in done.stdout
