"""The run-folder policy of ``msg3d train``: one writer at a time, then start fresh, resume, or refuse
(``--resume``, ``--auto-resume``, ``--force``), decided by comparing the new config with
RUN_DIR/config.json and with the config latest.pth records (its ``meta.config``).

Lock: ``RUN_DIR/.lock``, held with ``flock(LOCK_EX | LOCK_NB)`` by rank 0 from before it reads or
deletes anything in RUN_DIR until the run ends (``lock_run_dir``); it holds "pid N on HOST" of its
holder. A second ``msg3d train`` on the same folder (two terminals, or a Snakemake rerun after
``--unlock`` while the killed Snakemake's train job still runs) fails at once without touching it.
The kernel drops the lock when its holder dies, so a killed run never blocks the next one; the file
stays behind then, and is removed when a run ends normally. flock works between the processes of
one host and, on Linux, over NFS (emulated with NFS locks); a file system without locks fails the
start with its error.

Rules:
* no flag: a folder whose config.json differs is refused (use another --out, --resume or --force);
  one with the same config starts over;
* ``--resume``: continue from latest.pth; a config differing from config.json, or a latest.pth whose
  recorded config differs (config.json and latest.pth written by different runs), is refused
  unless ``--force``;
* ``--auto-resume`` (PYSKL's habit, for workflows): resume when latest.pth exists and both
  config.json and latest.pth's recorded config equal the new config, code digest included;
  otherwise start over, saying why on stderr;
* without ``--seed``, a run in a folder with a recorded seed reuses it, so it reproduces that run.

Configs are compared on what identifies the run. The data store's absolute path (``data.store``) is
recorded for information only: the store's meta (layout, modality, sample and row counts, source
pickle name and sha256), the split and the sample counts identify the data, so a project moved or
copied elsewhere (store included) still resumes.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from msg3d.checkpoint import read_checkpoint

# The files a training writes into RUN_DIR besides config.json (rank 0 only).
RUN_FILES = ("latest.pth", "best.pth", "epochs.csv", "log.jsonl")
LOCK_FILE = ".lock"
# Dotted config keys recorded for information, left out of the comparison (see the module docstring).
INFORMATION_ONLY = frozenset({"data.store"})


@contextlib.contextmanager
def lock_run_dir(out):
    """Hold the exclusive lock on run folder ``out`` (created if missing) for the ``with`` block.

    OSError ``OUT is in use by another msg3d train (pid N on HOST)`` at once when another process
    holds it; OSError naming the lock file when it cannot be taken. On exit the lock file is removed,
    and ``out`` too if this call created it and nothing else was written there (a refused start
    leaves no empty folder).
    """
    out = Path(out)
    created = not out.is_dir()
    fd = _acquire(out / LOCK_FILE)
    try:
        os.ftruncate(fd, 0)  # a killed holder's line may be there
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        # removed while still locked: a process that opened this file meanwhile sees it is gone and
        # locks a new one (see _acquire), so two holders never coexist; only our own file, not one
        # another run locked after ours was deleted from outside
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(out / LOCK_FILE)):
                (out / LOCK_FILE).unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote its files
                out.rmdir()


def _acquire(path):
    """Open and flock ``path``; returns the descriptor, which holds the lock until closed."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # the folder was just removed by a start that was refused in it
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip() or "pid unknown: it is just starting"
            os.close(fd)
            raise OSError(f"{path.parent} is in use by another msg3d train ({holder})") from None
        except OSError as exc:
            os.close(fd)
            raise OSError(f"cannot lock {path}: {exc.strerror}") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            return fd
        os.close(fd)  # its holder removed this file as it ended: lock the one at ``path`` now


def prepare_run_dir(out, config, *, seed_given, resume, force, auto_resume=False):
    """Check RUN_DIR against ``config`` and decide what to do (rank 0, holding ``lock_run_dir(out)``).

    Returns ``(config, resume_from)``: the config to use (with the recorded seed when ``--seed``
    was not given and the rest matches) and the checkpoint to resume from, or None to start fresh.
    With ``auto_resume`` it never refuses, and says on stderr which it chose and why.
    """
    out = Path(out)
    config_path = out / "config.json"
    latest = out / "latest.pth"
    old = None
    if config_path.exists():
        try:
            old = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            if not (force or auto_resume):
                raise ValueError(f"{config_path} is not valid JSON ({exc}); use --force to start over") from None
    if old is not None and not seed_given and "seed" in old:
        # no --seed: a rerun in the same folder reuses the recorded seed, so it reproduces that run
        config = dict(config, seed=old["seed"])
    if auto_resume:
        why = _why_not_resumed(latest, config_path, old, config)
        if why is None:
            print(f"msg3d train: --auto-resume: {latest} has the same config; resuming", file=sys.stderr)
            return config, latest
        print(f"msg3d train: --auto-resume: {why}; starting fresh", file=sys.stderr)
        return config, None
    if resume:
        if not latest.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {latest} to resume from")
        if old is not None and not force:
            _refuse(config_differences(old, config), f"--resume: the config differs from {config_path}",
                    "resume with the same settings, or add --force to resume anyway")
            _refuse(checkpoint_differences(latest, config),
                    f"--resume: {latest} records another config (its meta.config) than {config_path}",
                    "they were written by different runs; add --force to resume anyway")
        return config, latest
    if old is not None and not force:
        _refuse(config_differences(old, config), f"{out} holds a run with a different config ({config_path})",
                "use another --out, --resume with the same settings, or --force to overwrite it")
    return config, None


def _refuse(diffs, what, advice):
    """ValueError listing ``diffs`` (dotted keys with old -> new values) under ``what``, if any."""
    if diffs:
        raise ValueError(f"{what}:\n  " + "\n  ".join(diffs) + f"\n{advice}")


def _why_not_resumed(latest, config_path, old, config):
    """Why ``--auto-resume`` starts fresh instead of continuing from ``latest``; None when it continues.
    ``old`` is config.json's content (None when missing or unreadable)."""
    if not latest.exists():
        return f"no checkpoint {latest}"
    if old is None:
        return f"no readable {config_path} to compare the config with"
    if diffs := config_differences(old, config):
        return f"config differs from {config_path}: " + "; ".join(diffs)
    try:
        diffs = checkpoint_differences(latest, config)
    except ValueError as exc:  # not a checkpoint a resume could load: nothing to continue from
        return str(exc)
    if diffs:
        return f"{latest} records another config (its meta.config) than {config_path}: " + "; ".join(diffs)
    return None


def checkpoint_differences(latest, config):
    """``config_differences`` between the run config that checkpoint ``latest`` records (``meta.config``,
    written by ``msg3d.engine.saver``) and ``config``.

    ValueError naming the file when it is not a loadable checkpoint or records no config.
    """
    _, others, _ = read_checkpoint(latest)
    meta = others.get("meta")
    recorded = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(recorded, dict):
        raise ValueError(f"{latest} records no run config (meta.config): not a latest.pth written by msg3d train")
    return config_differences(recorded, config)


def config_differences(old, new, prefix=""):
    """Dotted keys whose values differ between two config dicts, leaving out ``INFORMATION_ONLY``."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if name in INFORMATION_ONLY:
            continue
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif a != b:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs
