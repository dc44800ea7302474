"""Atomic writer: leftovers of killed writers, output modes under the umask, full disk and quota."""

import errno
import os
import pickle
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from msg3d.data.store import StoreWriter, open_store
from msg3d.fileio import (STALE_AFTER_DAYS, atomic_path, write_bytes_atomic, write_csv_atomic,
                          write_json_atomic, write_pickle_atomic, write_text_atomic)

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def writer_tag(tmp_path):
    """The ``<host>`` part of this process's temporaries, read from a real one."""
    with atomic_path(tmp_path / "probe") as tmp:
        name = tmp.name
    (tmp_path / "probe").unlink()
    return name[len(".probe.tmp-"):].rsplit("-", 2)[0]


def dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def write_store(out, value=0.0):
    with StoreWriter(out, num_joints=25, channels=3) as writer:
        writer.append("S001", 0, np.full((1, 4, 25, 3), value, np.float32))
        writer.finish(splits={"train": ["S001"]}, meta={"layout": "nturgb+d"})


def age(path, days):
    """Set the mtime of ``path`` and everything inside it ``days`` into the past."""
    when = time.time() - days * 86400
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (when, when))
    os.utime(path, (when, when))


def names(folder):
    return sorted(p.name for p in folder.iterdir())


# --- leftovers of killed writers -------------------------------------------------------------


def test_killed_writer_temp_kept_while_alive_then_removed(tmp_path):
    out = tmp_path / "res" / "metrics.json"
    script = ("import sys, time\nfrom msg3d.fileio import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_text('half')\n    print(tmp, flush=True)\n    time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        temp = Path(child.stdout.readline().strip())
        assert temp.parent == out.parent and temp.read_text() == "half"
        write_text_atomic(out, "first")  # a concurrent write: the live writer's temp stays
        assert out.read_text() == "first" and temp.exists()
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert temp.exists()  # kill -9 left it behind
    write_text_atomic(out, "second")
    assert names(out.parent) == ["metrics.json"] and out.read_text() == "second"


def test_dead_writer_folder_temp_and_old_leftover_removed(tmp_path):
    tag, pid = writer_tag(tmp_path), dead_pid()
    out = tmp_path / "store_j"
    write_store(out)
    temp = tmp_path / f".store_j.tmp-{tag}-{pid}-k2_x9abc"  # killed while deriving
    temp.mkdir()
    (temp / "data.npy").write_bytes(b"\0" * 4096)
    old = tmp_path / f".store_j.old-{tag}-{pid}-4567ef01"  # killed between the two renames of a replace
    old.mkdir()
    (old / "meta.json").write_text("{}")
    write_store(out, value=1.0)
    assert names(tmp_path) == ["store_j"]
    assert open_store(out).read_sample(0).max() == 1.0


def test_failed_folder_swap_puts_the_previous_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "store_j"
    write_store(out)
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".store_j.tmp-"):
            raise OSError(errno.EIO, "Input/output error", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        write_store(out, value=1.0)
    assert names(tmp_path) == ["store_j"] and open_store(out).read_sample(0).max() == 0.0


def test_live_writers_temps_kept(tmp_path):
    tag = writer_tag(tmp_path)
    out = tmp_path / "latest.pth"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        own = tmp_path / f".latest.pth.tmp-{tag}-{os.getpid()}-aaaa"  # e.g. another thread of this process
        other = tmp_path / f".latest.pth.tmp-{tag}-{sleeper.pid}-bbbb"
        for temp in (own, other):
            temp.write_bytes(b"partial")
            age(temp, STALE_AFTER_DAYS - 1)
        write_bytes_atomic(out, b"new")
        assert names(tmp_path) == sorted([own.name, other.name, "latest.pth"])
    finally:
        sleeper.kill()
        sleeper.wait()
    write_bytes_atomic(out, b"newer")  # the sleeper is gone now; this process is not
    assert names(tmp_path) == sorted([own.name, "latest.pth"])


def test_unknown_writers_temps_removed_only_when_a_week_old(tmp_path):
    pid = dead_pid()
    out = tmp_path / "ann.pkl"
    other_host = tmp_path / f".ann.pkl.tmp-node-17.cluster-{pid}-0a1b"  # pid of another machine
    other_host_old = tmp_path / f".ann.pkl.tmp-node-18-{pid}-2c3d"
    legacy = tmp_path / ".ann.pkl.tmp-k2_x9abc"  # msg3d before writer tags
    legacy_old = tmp_path / ".ann.pkl.tmp-q7_z0def"
    folder = tmp_path / f".ann.pkl.old-node-17-{pid}-4e5f"  # old folder, but written to just now
    for temp in (other_host, other_host_old, legacy, legacy_old):
        temp.write_bytes(b"partial")
    folder.mkdir()
    (folder / "part").write_bytes(b"x")
    for temp in (other_host_old, legacy_old):
        age(temp, STALE_AFTER_DAYS + 1)
    os.utime(folder, (0, 0))
    # other outputs' temporaries and look-alikes are never touched
    unrelated = [tmp_path / n for n in (f".ann.pkl2.tmp-node-17-{pid}-6a7b", ".ann.pkl.tmpx", "ann.pkl.tmp-x")]
    for path in unrelated:
        path.write_bytes(b"x")
        age(path, STALE_AFTER_DAYS + 1)
    write_pickle_atomic(out, {"a": 1})
    assert names(tmp_path) == sorted(p.name for p in (out, other_host, legacy, folder, *unrelated))


# --- modes -----------------------------------------------------------------------------------


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)], ids=["umask022", "umask002"])
def umask(request):
    mask, file_mode, dir_mode = request.param
    previous = os.umask(mask)
    yield file_mode, dir_mode
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_output_modes_follow_the_umask(tmp_path, umask):
    file_mode, dir_mode = umask
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    write_text_atomic(tmp_path / "a.md", "x")
    write_json_atomic(tmp_path / "new" / "a.json", {"a": 1})
    write_csv_atomic(tmp_path / "a.csv", ["a"], [[1]])
    write_pickle_atomic(tmp_path / "a.pkl", [1])
    with atomic_path(tmp_path / "folder", is_dir=True) as tmp:
        (tmp / "inner.txt").write_text("x")
    write_store(tmp_path / "store")
    files = [tmp_path / n for n in ("a.bin", "a.md", "new/a.json", "a.csv", "a.pkl", "folder/inner.txt")]
    files += [tmp_path / "store" / n for n in ("data.npy", "index.npz", "meta.json", "splits.json")]
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in files} == {
        str(p.relative_to(tmp_path)): oct(file_mode) for p in files}
    for folder in ("new", "folder", "store"):
        assert mode(tmp_path / folder) == dir_mode, folder


def test_replaced_outputs_get_the_umask_mode_not_the_old_one(tmp_path, umask):
    # outputs of earlier msg3d versions are 0600 / 0700: a rerun repairs them
    file_mode, dir_mode = umask
    out, store = tmp_path / "scores.pkl", tmp_path / "store"
    write_pickle_atomic(out, [1])
    write_store(store)
    out.chmod(0o600)
    store.chmod(0o700)
    (store / "meta.json").chmod(0o600)
    write_pickle_atomic(out, [2])
    write_store(store, value=2.0)
    assert (mode(out), mode(store), mode(store / "meta.json")) == (file_mode, dir_mode, file_mode)
    assert pickle.loads(out.read_bytes()) == [2] and open_store(store).read_sample(0).max() == 2.0


# --- full disk and quota ---------------------------------------------------------------------


def fake_disk(monkeypatch, free):
    usage = SimpleNamespace(total=100 * GiB, used=100 * GiB - free, free=free)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)


def test_no_space_gives_one_oserror_naming_the_file(tmp_path, monkeypatch):
    out = tmp_path / "results" / "model_zoo.md"
    write_text_atomic(out, "previous")
    fake_disk(monkeypatch, 0)

    def write_half(self, text, **kwargs):
        with open(self, "w") as f:
            f.write(text[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_half)
    with pytest.raises(OSError) as info:
        write_text_atomic(out, "new table")
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"no space left on device while writing {out} (file system of {out.parent}: 0 bytes free)"
    assert names(out.parent) == ["model_zoo.md"]
    monkeypatch.undo()
    assert out.read_text() == "previous"


def test_no_space_inside_a_folder_names_the_folder(tmp_path, monkeypatch):
    out = tmp_path / "store_j"
    write_store(out)
    fake_disk(monkeypatch, 0)

    def refuse(self, text, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)  # meta.json / splits.json, inside the temporary folder
    with pytest.raises(OSError, match=rf"^no space left on device while writing {out} \(") as info:
        write_store(out, value=3.0)
    assert info.value.errno == errno.ENOSPC
    assert names(tmp_path) == ["store_j"]
    monkeypatch.undo()
    assert open_store(out).read_sample(0).max() == 0.0


def torch_like_save(obj, path):
    """Like torch.save on a full disk: part of the file, then a RuntimeError without an errno."""
    Path(path).write_bytes(b"PK\x03\x04 partial zip")
    raise RuntimeError("[enforce fail at inline_container.cc:659] . PytorchStreamWriter failed writing file "
                       "data/3: file write failed")


def test_runtime_error_on_a_full_disk_names_the_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "work" / "latest.pth"
    write_bytes_atomic(out, b"previous checkpoint")
    fake_disk(monkeypatch, 0)
    with pytest.raises(OSError) as info:
        with atomic_path(out) as tmp:
            torch_like_save({}, tmp)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value) == f"no space left on device while writing {out} (file system of {out.parent}: 0 bytes free)"
    assert names(out.parent) == ["latest.pth"] and out.read_bytes() == b"previous checkpoint"


def test_runtime_error_under_a_full_quota_names_the_file(tmp_path, monkeypatch):
    out = tmp_path / "best.pth"
    fake_disk(monkeypatch, 5 * GiB)  # a quota leaves the file system free bytes

    def fsync(fd):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        with atomic_path(out) as tmp:
            torch_like_save({}, tmp)
    assert info.value.errno == errno.EDQUOT
    assert str(info.value) == (f"disk quota exceeded while writing {out} (file system of {tmp_path}: 5.0 GiB free, "
                               "but your quota there is used up)")
    assert names(tmp_path) == []


def test_unrelated_runtime_error_passes_unchanged(tmp_path):
    out = tmp_path / "latest.pth"
    write_bytes_atomic(out, b"previous")
    error = RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(RuntimeError) as info:
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"partial")
            raise error
    assert info.value is error
    assert names(tmp_path) == ["latest.pth"] and out.read_bytes() == b"previous"


def test_save_checkpoint_on_a_full_disk(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from msg3d.checkpoint import save_checkpoint

    out = tmp_path / "latest.pth"
    out.write_bytes(b"previous")
    monkeypatch.setattr(torch, "save", torch_like_save)
    fake_disk(monkeypatch, 0)
    with pytest.raises(OSError, match=rf"^no space left on device while writing {out} \(file system"):
        save_checkpoint(out, torch.nn.Linear(2, 2))
    assert names(tmp_path) == ["latest.pth"] and out.read_bytes() == b"previous"
