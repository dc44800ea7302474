"""Crash-safe file output: everything is written to a temporary sibling, then renamed.

A run killed at any point therefore leaves either the previous complete file or none, never a
half-written one that a later run (or Snakemake) would trust.

Temporaries are named ``.NAME.tmp-<host>-<pid>-<random>`` beside the output ``NAME`` (a folder
being replaced is first renamed to ``.NAME.old-<host>-<pid>-<random>``), so the writer can be told
from the name. A writer killed mid-write (kill -9, OOM, wall time) leaves its temporary behind; the
next atomic write of the same ``NAME`` removes each such leftover whose writer is gone, that is:

* one written on this host (``<host>`` is the host name, plus ``~<pid namespace>`` in a container
  with its own pid namespace) by a pid that no longer exists
  (``os.kill(pid, 0)`` raises ProcessLookupError). A live pid's temporary is a concurrent write,
  whoever owns it, and is kept;
* another host's leftover (shared cluster file systems: its pids mean nothing here), or one whose
  name has no writer (msg3d before this scheme), in which nothing has been modified for
  ``STALE_AFTER_DAYS``. A writer modifies its temporary all along (the longest write, an NTU
  store, takes about an hour) and cluster wall-time limits are a few days, so a week untouched
  means no live writer, even allowing for a suspended job or skewed clocks. Not applied to this
  host's live pids: a ``.old-`` folder is the replaced output, renamed, with its old mtimes (the
  price: a leftover whose pid an unrelated process reuses stays until that process ends).

A leftover that cannot be removed (another user's, without permission) is reported with a warning
and does not stop the write.

Modes: the temporary is created with ``os.open(..., 0o666)`` / ``os.mkdir(..., 0o777)``, so the
kernel applies the umask (or the folder's default ACL) exactly as for a plain ``open(..., "w")``:
outputs get ``0o666 & ~umask`` (files) and ``0o777 & ~umask`` (folders), also when they replace an
older output, whose mode is not kept (outputs of earlier versions were 0600/0700, and a rerun
should repair them). Nothing reads the umask, so there is no window in which it is changed. Files
written inside a temporary folder with plain ``open`` (or numpy, or these writers) follow the
umask too.

A full disk or quota (ENOSPC, EDQUOT) during a write raises one ``OSError`` (``errno`` set) naming
the output and the free space of its file system; the temporary is removed and the previous
output stays. ``torch.save`` reports the refusal as a RuntimeError without the errno, so a
RuntimeError is taken for one when the file system then has no free bytes or refuses a small probe
write (a quota leaves free bytes); any other RuntimeError passes unchanged.
"""

import contextlib
import csv
import errno
import hashlib
import io
import itertools
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path

STALE_AFTER_DAYS = 7
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_PROBE_BYTES = 1 << 16
# the inode of the kernel's initial pid namespace (PROC_PID_INIT_INO), the same on every Linux host
_INITIAL_PID_NAMESPACE = 0xEFFFFFFC
# what follows ".NAME.tmp-" / ".NAME.old-": host (may hold dashes), pid, random part (no dashes)
_WRITER_TAG = re.compile(r"(?P<host>.*)-(?P<pid>[0-9]{1,9})-[^-]+")


def _writer_host():
    """This host's name as a file name can hold it, plus the pid namespace when it is not the host's own.

    A pid names a process only within one pid namespace: a container with its own namespace but the
    host's name (e.g. docker --network=host) must not judge the host's writers by pid, nor they its.
    """
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # no /proc (not Linux): the host name alone
        return host
    return host if namespace == _INITIAL_PID_NAMESPACE else f"{host}~{namespace}"


_HOST = _writer_host()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def _last_modified(path):
    """Newest mtime (epoch seconds) of ``path`` and, for a folder, of everything inside it."""
    newest = os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path):  # a file yields nothing
        for name in dirs + files:
            newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _abandoned(path, writer_tag, now):
    """Whether the temporary ``path``, whose name ends in ``writer_tag``, has no live writer (module docstring)."""
    match = _WRITER_TAG.fullmatch(writer_tag)
    if match and match["host"] == _HOST:
        # a live writer's temp is never touched, however old it looks: its .old- folder is the
        # replaced output, renamed, with that output's old mtimes
        return not _pid_alive(int(match["pid"]))
    return now - _last_modified(path) > STALE_AFTER_DAYS * 86400


def _clear_abandoned_temporaries(path):
    """Remove the leftovers of killed atomic writes of ``path`` (the rule is in the module docstring)."""
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")  # of equal length
    with os.scandir(path.parent) as entries:
        leftovers = [entry for entry in entries if entry.name.startswith(prefixes)]
    now = time.time()
    for entry in leftovers:
        try:
            if not _abandoned(entry.path, entry.name[len(prefixes[0]):], now):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # its writer finished, or another writer removed it first
            pass
        except OSError as exc:
            warnings.warn(f"{entry.path}: cannot remove this leftover of an interrupted write ({exc})",
                          stacklevel=4)


def _temporary_name(path, kind):
    """``.NAME.<kind>-<host>-<pid>-<random>`` beside ``path``: 48 random bits, so no clash in practice."""
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(6)}")


def _new_temporary(path, is_dir):
    """Create the temporary for ``path``, its mode from the umask (O_EXCL / mkdir: never an existing one)."""
    tmp = _temporary_name(path, "tmp")
    if is_dir:
        os.mkdir(tmp, 0o777)
    else:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def _replace_folder(tmp, path):
    """Put the folder ``tmp`` in place of the existing ``path`` (a folder cannot be renamed onto a non-empty one)."""
    old = _temporary_name(path, "old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)  # the previous output back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _space_refused(exc, directory):
    """ENOSPC or EDQUOT if ``exc``, raised while writing into ``directory``, is a refusal for lack of space.

    Ask before the temporary is removed (which frees its space). See the module docstring.
    """
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in _SPACE_ERRNOS else None
    if not isinstance(exc, RuntimeError):
        return None
    if shutil.disk_usage(directory).free == 0:
        return errno.ENOSPC
    try:
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(bytes(_PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())  # network file systems report the refusal only when flushed
    except OSError as probe_exc:
        return probe_exc.errno if probe_exc.errno in _SPACE_ERRNOS else None
    return None


def _size(num_bytes):
    """``num_bytes`` for a message: "0 bytes", "512 bytes", "3.2 GiB"."""
    if num_bytes < 1024:
        return f"{num_bytes} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        num_bytes /= 1024
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}"


def _out_of_space(code, path):
    """The OSError for a write of ``path`` refused with ``code`` (ENOSPC or EDQUOT): one line, errno set."""
    quota = "" if code == errno.ENOSPC else ", but your quota there is used up"
    error = OSError(f"{os.strerror(code).lower()} while writing {path} "
                    f"(file system of {path.parent}: {_size(shutil.disk_usage(path.parent).free)} free{quota})")
    error.errno = code  # set after construction, so that str() is the message alone
    return error


@contextlib.contextmanager
def atomic_path(path, *, is_dir=False):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file or folder is removed and ``path`` is left untouched.
    With ``is_dir=True`` the temporary path is an empty directory, and an existing ``path``
    directory is replaced as a whole. Leftovers of killed writes of ``path`` are removed first;
    modes follow the umask; a full disk or quota raises one ``OSError`` naming ``path`` (see the
    module docstring for each).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_abandoned_temporaries(path)
    tmp = None
    try:
        tmp = _new_temporary(path, is_dir)
        yield tmp
        if is_dir and path.exists():
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        refused = _space_refused(exc, path.parent)
        error = _out_of_space(refused, path) if refused else None  # free space before the temporary's is freed
        if tmp is not None:
            if is_dir:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        if error:
            raise error from exc
        raise


def write_bytes_atomic(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, obj, *, indent=2):
    """Write ``obj`` as JSON with sorted keys (stable bytes for the same content)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def write_csv_atomic(path, header, rows):
    """Write ``header`` and ``rows`` (sequences of fields) as UTF-8 CSV with ``\\n`` line ends.

    Python's default (excel) dialect: a field is quoted only when it holds a comma, a double quote
    or a ``\\n``, so ``csv.reader`` gives every field back. A ``\\r`` is refused: with ``\\n`` line
    ends csv leaves it unquoted, and a reader would split the line there.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            for row in itertools.chain([header], rows):
                if any(isinstance(field, str) and "\r" in field for field in row):
                    raise ValueError(f"{path}: a CSV field holds a carriage return: {row!r}")
                writer.writerow(row)


def write_pickle_atomic(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


class PickledList:
    """Marks a value of ``write_pickle_streamed``'s dict to be written as the list of what the
    iterable ``items`` yields, one item at a time, without holding the list in memory."""

    __slots__ = ("items",)

    def __init__(self, items):
        self.items = items


STREAM_PROTOCOL = 3  # why 3: see write_pickle_streamed
_PROTO = pickle.PROTO + bytes([STREAM_PROTOCOL])
_HEAD = _PROTO + pickle.EMPTY_DICT


def _pickled_alone(obj):
    """``obj`` as protocol-3 opcodes without PROTO and STOP, memo-less: they build ``obj`` on the
    unpickler's stack wherever they are put, and nothing after them can refer back into them."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=STREAM_PROTOCOL)
    pickler.fast = True  # no PUT/GET: an item never meets another item's memo entries
    pickler.dump(obj)
    return buffer.getbuffer()[len(_PROTO):-len(pickle.STOP)]


def write_pickle_streamed(path, entries, *, batch_size=64):
    """Write a dict as a pickle to ``path`` (atomically) without holding its big lists in memory.

    ``entries`` yields the dict's ``(key, value)`` pairs in order. A ``PickledList`` value is
    written as a list of the items its iterable yields, each pickled and written as soon as it
    comes (one item in memory at a time); every other value is pickled whole. The pairs are taken
    one by one, so a pair made after a ``PickledList`` has been used up may depend on what it
    yielded (a split listing the samples kept, say). ``pickle.load`` of the file equals
    ``dict(pairs)`` with each ``PickledList`` replaced by the list of its items (and so does
    ``msg3d.safe_pickle.load`` for what it accepts).

    Layout: ``PROTO 3, EMPTY_DICT``, then per pair ``key value SETITEM``, where a list value is
    ``EMPTY_LIST`` followed by ``MARK item ... APPENDS`` groups of up to ``batch_size`` items, then
    ``STOP``. Each key, value and item is a memo-less ("fast" Pickler) protocol-3 pickle without
    its PROTO and STOP, so the pieces need no shared memo and are self-contained. Protocol 3: it
    writes bytes (numpy's array data) as BINBYTES (protocol 2 spells them as latin-1 text, half as
    large again) and has no FRAME opcodes (protocol 4 puts the STOP inside its last frame). A
    recursive item raises ``ValueError`` (fast mode cannot pickle one).

    On an exception (from ``entries``, an item's iterable or the file system) nothing is left at
    ``path`` but its previous content, as with every writer here (``atomic_path``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(_HEAD)
            for key, value in entries:
                f.write(_pickled_alone(key))
                if isinstance(value, PickledList):
                    f.write(pickle.EMPTY_LIST)
                    pending = 0  # items written since the last MARK
                    for item in value.items:
                        if not pending:
                            f.write(pickle.MARK)
                        f.write(_pickled_alone(item))
                        pending += 1
                        if pending == batch_size:
                            f.write(pickle.APPENDS)
                            pending = 0
                    if pending:
                        f.write(pickle.APPENDS)
                else:
                    f.write(_pickled_alone(value))
                f.write(pickle.SETITEM)
            f.write(pickle.STOP)


def sha256_file(path, *, chunk_size=1 << 20):
    """Hex SHA-256 of a file's bytes, read in chunks (provenance of inputs and checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
