"""Crash-safe file output: everything is written to a temporary sibling, then renamed.

A run killed at any point therefore leaves either the previous complete file or none, never a
half-written one that a later run (or Snakemake) would trust.
"""

import contextlib
import csv
import hashlib
import itertools
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, *, is_dir=False):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file or folder is removed and ``path`` is left untouched.
    With ``is_dir=True`` the temporary path is an empty directory, and an existing ``path``
    directory is replaced as a whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
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


def sha256_file(path, *, chunk_size=1 << 20):
    """Hex SHA-256 of a file's bytes, read in chunks (provenance of inputs and checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
