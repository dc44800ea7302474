"""msg3d.fileio.write_pickle_streamed: a dict pickled with its big list written item by item."""

import gc
import io
import pickle
import pickletools
import weakref

import numpy as np
import pytest

from msg3d import safe_pickle
from msg3d.fileio import PickledList, write_pickle_streamed

MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET", "FRAME"}


def content(obj):
    """Pickle bytes of ``obj`` without memo: equal for equal content, whatever objects are shared."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=3)
    pickler.fast = True
    pickler.dump(obj)
    return buffer.getvalue()


def sample(i):
    rng = np.random.default_rng(i)
    return {
        "frame_dir": f"clip{i:03d}",
        "label": i % 3,
        "keypoint": rng.normal(size=(2, 5, 18, 2)).astype(np.float32),
        "keypoint_score": rng.uniform(size=(2, 5, 18)).astype(np.float32),
        "total_frames": 5,
        "flags": (True, None, 1.5, b"\x00\xff", [i, -(2**70)]),
    }


def expected_dict(n):
    return {"annotations": [sample(i) for i in range(n)], "split": {"train": [f"clip{i:03d}" for i in range(n)]},
            "num_classes": 3}


def entries(n):
    yield "annotations", PickledList(sample(i) for i in range(n))
    yield "split", {"train": [f"clip{i:03d}" for i in range(n)]}
    yield "num_classes", 3


@pytest.mark.parametrize("n, batch_size", [(0, 4), (1, 4), (7, 3), (8, 4), (5, 1), (5, 64)])
def test_round_trip_equals_pickle_dumps(tmp_path, n, batch_size):
    path = tmp_path / "out.pkl"
    write_pickle_streamed(path, entries(n), batch_size=batch_size)
    data = path.read_bytes()
    want = content(expected_dict(n))
    loaders = {
        "C unpickler": lambda: pickle.loads(data),
        "Python unpickler": lambda: pickle._Unpickler(io.BytesIO(data)).load(),
        "restricted": lambda: safe_pickle.load(path, "a test pickle"),
    }
    for name, load in loaders.items():
        got = load()
        assert list(got) == ["annotations", "split", "num_classes"], name
        # the same content, dtypes and key orders included, as the dict pickled in one go
        assert content(got) == want, name
        assert content(got) == content(pickle.loads(pickle.dumps(expected_dict(n)))), name

    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert ops[:2] == ["PROTO", "EMPTY_DICT"] and ops[-1] == "STOP"
    assert not MEMO_OPCODES & set(ops)  # no item can refer to another's memo entries

    # the list is filled by MARK ... APPENDS groups of batch_size items (ints: no inner lists)
    write_pickle_streamed(path, [("x", PickledList(range(n)))], batch_size=batch_size)
    ops = [op.name for op, _, _ in pickletools.genops(path.read_bytes())]
    assert ops.count("MARK") == ops.count("APPENDS") == -(-n // batch_size)
    assert ops.count("SETITEM") == 1 and "APPEND" not in ops
    assert pickle.loads(path.read_bytes()) == {"x": list(range(n))}


def test_later_pairs_may_depend_on_the_streamed_items(tmp_path):
    kept = []

    def items():
        for i in range(5):
            if i % 2:
                kept.append(i)
                yield i

    def pairs():
        yield "items", PickledList(items())
        yield "kept", list(kept)  # made only after the list was written

    write_pickle_streamed(tmp_path / "a.pkl", pairs())
    assert pickle.loads((tmp_path / "a.pkl").read_bytes()) == {"items": [1, 3], "kept": [1, 3]}


def test_items_are_not_held(tmp_path):
    alive = []

    def items():
        for i in range(6):
            gc.collect()
            # every item given before the last one is pickled and released, even within a batch
            assert sum(ref() is not None for ref in alive[:-1]) == 0
            item = np.full(1000, i, np.float32)
            alive.append(weakref.ref(item))
            yield item
            del item

    write_pickle_streamed(tmp_path / "a.pkl", [("x", PickledList(items()))], batch_size=4)
    got = pickle.loads((tmp_path / "a.pkl").read_bytes())["x"]
    assert [int(a[0]) for a in got] == list(range(6))


def test_error_leaves_the_previous_file(tmp_path):
    path = tmp_path / "out.pkl"
    path.write_bytes(b"previous")

    def failing():
        yield sample(0)
        yield sample(1)
        raise OSError("read error in the middle")

    with pytest.raises(OSError, match="read error in the middle"):
        write_pickle_streamed(path, [("a", PickledList(failing()))], batch_size=1)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pkl"]  # no temporary left

    def late_failure():
        yield "a", PickledList(range(3))
        raise ValueError("split failed")

    new = tmp_path / "sub" / "new.pkl"
    with pytest.raises(ValueError, match="split failed"):
        write_pickle_streamed(new, late_failure())
    assert list(new.parent.iterdir()) == []


def test_recursive_item_and_bad_batch_size(tmp_path):
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError):
        write_pickle_streamed(tmp_path / "a.pkl", [("a", PickledList([1, loop]))])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        write_pickle_streamed(tmp_path / "a.pkl", [("a", 1)], batch_size=0)
