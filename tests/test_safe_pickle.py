"""Restricted unpickling: hostile pickles are refused before their code runs; PYSKL's and our pickles load."""

import collections
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msg3d import safe_pickle

REPO = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickles by calling ``func(*args)``: a stand-in for a hostile pickle's payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Anything:
    """A class of this test module: plain pickle would import the module and build it."""


def hostile_payloads(marker, protocol):
    """(payload, the first global it names, hence the refused one): each would create ``marker`` if it ran."""
    touch = f"open({str(marker)!r}, 'w').close()"
    return [
        (RunsCode(os.system, f"touch '{marker}'"), f"{os.system.__module__}.system"),
        (RunsCode(eval, touch), "builtins.eval"),
        (RunsCode(exec, touch), "builtins.exec"),
        (RunsCode(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        (RunsCode(getattr, RunsCode(__import__, "os"), "system"), "builtins.getattr"),
        # protocols 0 and 1 rebuild instances through copyreg first
        ({"split": {}, "annotations": [Anything()]},
         "copyreg._reconstructor" if protocol < 2 else f"{__name__}.Anything"),
        # calling the array class on pickled arguments forges object pointers from bytes
        (RunsCode(np.ndarray, (1,), np.dtype("O"), b"\x41" * 8), "numpy.ndarray called on pickled arguments"),
    ]


def write_pickle(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_pickles_are_refused_before_their_code_runs(tmp_path, protocol):
    marker = tmp_path / "MARK"
    for i, (payload, name) in enumerate(hostile_payloads(marker, protocol)):
        path = write_pickle(tmp_path / f"p{i}.pkl", payload, protocol)
        with pytest.raises(ValueError) as info:
            safe_pickle.load(path, "an annotation pickle")
        assert str(info.value) == (f"{path}: refused to load: it asks for {name}, which an annotation pickle "
                                   "never holds (a pickle from elsewhere can run code)")
        assert not marker.exists()


def test_refused_global_inside_a_legitimate_structure(tmp_path):
    marker = tmp_path / "MARK"
    data = {"split": {"xsub_val": ["a"]}, "annotations": [
        {"frame_dir": "a", "keypoint": np.zeros((1, 2, 3, 3), np.float16), "hook": RunsCode(eval, "1")}]}
    with pytest.raises(ValueError, match=r"s\.pkl: refused to load: it asks for builtins\.eval, which a scores "
                                         r"pickle never holds"):
        safe_pickle.load(write_pickle(tmp_path / "s.pkl", data, protocol=2), "a scores pickle")
    assert not marker.exists()


def test_guarded_reconstructors_refuse_misuse(tmp_path):
    _reconstruct = np.zeros(1).__reduce__()[0]  # numpy's, under its 1.x or 2.x module name
    # _reconstruct builds plain ndarrays only; bytes are decoded with latin1 only
    with pytest.raises(ValueError, match=r"not an annotation pickle \(UnpicklingError: numpy's _reconstruct called"):
        safe_pickle.load(write_pickle(tmp_path / "r.pkl", RunsCode(_reconstruct, np.dtype, (0,), b"b")),
                         "an annotation pickle")
    import _codecs

    with pytest.raises(ValueError, match=r"UnpicklingError: _codecs.encode with codec 'rot13'"):
        safe_pickle.load(write_pickle(tmp_path / "c.pkl", RunsCode(_codecs.encode, "abc", "rot13")),
                         "an annotation pickle")


def assert_same(a, b):
    """Deep equality that also compares numpy dtypes and shapes."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def pyskl_like():
    """What PYSKL annotation and result pickles (and ours) hold, and a little more."""
    rng = np.random.default_rng(0)
    return {
        "split": {"xsub_train": ["S001C001P001R001A001"], "xsub_val": ["S001C001P002R001A002"]},
        "annotations": [
            {"frame_dir": "S001C001P001R001A001", "label": 0, "total_frames": 5,
             "keypoint": rng.normal(size=(2, 5, 25, 3)).astype(np.float16)},
            {"frame_dir": "S001C001P002R001A002", "label": np.int64(1), "total_frames": np.int32(4),
             "keypoint": rng.uniform(0, 1000, (1, 4, 17, 2)).astype(np.float32),
             "keypoint_score": rng.uniform(size=(1, 4, 17)).astype(np.float32),
             "img_shape": (1080, 1920), "original_shape": [np.int64(1080), 1920]},
        ],
        "scores": [np.float32([0.25, 0.75]), rng.random(3)],
        "scalars": [np.float16(1.5), np.float32(2.5), np.float64(np.nan), np.int8(-3), np.uint16(7), np.bool_(True),
                    1 + 2j, None, True, 2**70, 1e-300, "ünïcødé", b"\x00\xffbytes", bytearray(b"xy")],
        "arrays": [np.arange(6, dtype=np.int32).reshape(2, 3), np.asfortranarray(np.ones((2, 3))),
                   np.arange(10)[::3], np.zeros((0, 4), np.float32), np.array(3.5), np.array(["a", "bc"]),
                   np.array(["x", 1, None], dtype=object), np.array([True, False]), np.uint8([1, 255])],
        "containers": (collections.OrderedDict(b=1, a=[2, {"c": (3,)}]), {1, 2}, frozenset({"x"}), [], {}, ()),
        "dtypes": [np.dtype("float16"), np.dtype("<U4"), type(np.dtype("float32"))],
    }


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_pyskl_style_and_own_pickles_load_under_every_protocol(tmp_path, protocol):
    data = pyskl_like()
    got = safe_pickle.load(write_pickle(tmp_path / "ok.pkl", data, protocol), "an annotation pickle")
    assert_same(got, pickle.loads(pickle.dumps(data, protocol=protocol)))
    assert_same(got, data)


def test_numpy_1x_module_names_load(tmp_path):
    """numpy 1.x writes numpy.core.multiarray where 2.x writes numpy._core.multiarray."""
    data = pyskl_like()
    raw = pickle.dumps(data, protocol=2)  # text GLOBAL opcodes: the module name can be replaced in place
    assert b"numpy._core.multiarray\n" in raw
    path = tmp_path / "np1.pkl"
    path.write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    assert_same(safe_pickle.load(path, "a scores pickle"), data)


def test_corrupt_and_missing_files(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(pyskl_like(), protocol=2)[:-50])
    with pytest.raises(ValueError, match=r"cut\.pkl: not a scores pickle \("):
        safe_pickle.load(path, "a scores pickle")
    with pytest.raises(FileNotFoundError):
        safe_pickle.load(tmp_path / "none.pkl", "a scores pickle")


# A dtype whose pickled state claims an object field but flags that deny holding objects, and an
# array of it over 8 raw bytes: reading the field would follow a forged pointer.
FORGE = '''
import pickle, sys, numpy as np
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct
class ForgedDtype:
    def __reduce__(self):
        return (np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))
class ForgedArray:
    def __reduce__(self):
        return (_reconstruct, (np.ndarray, (0,), b"b"),
                (1, (1,), ForgedDtype(), False, (0x4141414141414141).to_bytes(8, "little")))
payload = {"annotations": [{"keypoint": ForgedArray(), "frame_dir": "x"}]}
if sys.argv[1].endswith(".pth"):
    import torch
    torch.save({"meta": {"best": ForgedArray()}, "state_dict": {"w": torch.zeros(1)}}, sys.argv[1])
else:
    with open(sys.argv[1], "wb") as f:
        pickle.dump(payload, f, protocol=int(sys.argv[2]))
'''

READ = '''
import sys
from msg3d import checkpoint, safe_pickle
try:
    if sys.argv[1].endswith(".pth"):
        checkpoint.read_checkpoint(sys.argv[1])
    else:
        print(repr(safe_pickle.load(sys.argv[1], "an annotation pickle")))
except ValueError as exc:
    print(exc)
'''


@pytest.mark.parametrize("name, protocol", [("forged.pkl", 2), ("forged.pkl", 5), ("forged.pth", 0)])
def test_a_dtype_that_forges_object_pointers_is_refused(tmp_path, name, protocol):
    """Run in a child: were the forged array accepted, reading it would crash the process."""
    path = tmp_path / name
    subprocess.run([sys.executable, "-c", FORGE, str(path), str(protocol)], check=True)
    proc = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    what = "a checkpoint" if name.endswith(".pth") else "an annotation pickle"
    assert proc.stdout.strip() == (f"{path}: refused to load: it holds a numpy array or value of a structured dtype, "
                                   f"which {what} never holds (its state could forge object pointers)")
