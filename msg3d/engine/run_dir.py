"""The run-folder policy of ``msg3d train``: one writer at a time, then resume, start a new run, or
refuse, decided by comparing the new config with RUN_DIR/config.json and with the config latest.pth
records (its ``meta.config``).

Lock: ``RUN_DIR/.lock``, held with ``flock(LOCK_EX | LOCK_NB)`` by rank 0 from before it reads or
deletes anything in RUN_DIR until the run ends (``lock_run_dir``); it holds "pid N on HOST" of its
holder. A second ``msg3d train`` on the same folder (two terminals, or a Snakemake rerun after
``--unlock`` while the killed Snakemake's train job still runs) fails at once without touching it.
The kernel drops the lock when its holder dies, so a killed run never blocks the next one; the file
stays behind then, and is removed when a run ends normally. flock works between the processes of
one host and, on Linux, over NFS (emulated with NFS locks); a file system without locks fails the
start with its error.

Rules (PYSKL's habit: rerunning the command after a crash continues the run):
* no flag: resume from latest.pth when it records the same config, and config.json (if readable)
  holds it too; a folder without a checkpoint starts a new run unless config.json records another
  config; any other difference is refused, naming the differing keys (use another --out, or
  ``--force``);
* ``--resume``: the same, but a folder with nothing to resume is an error too;
* ``--auto-resume`` (for workflows): never refuses: resume as without a flag, else start a new run,
  saying why on stderr (a config or code change retrains, as Snakemake expects);
* ``--force``: start a new run whatever the folder holds;
* without ``--seed``, a run in a folder with a recorded seed (config.json, else latest.pth) reuses
  it, so it reproduces that run.
A new run never deletes the files of the run it replaces up front: ``msg3d.engine.saver`` replaces
them once the new run has written its first latest.pth (``RunPlan.replaces``).

Configs are compared on what identifies the run's results. Recorded for information only
(``INFORMATION_ONLY``): the data store's absolute path (the store's meta with its source pickle's
sha256, the split and the sample counts identify the data, so a project moved or copied elsewhere,
store included, still resumes) and the hyper-parameters that change neither the data order nor the
arithmetic (``num_workers``: the sampling RNG depends on (seed, epoch, item) only; ``log_interval``,
``checkpoint_interval`` and ``tensorboard``: what is recorded, and when). A resume records the new
values.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from msg3d.checkpoint import read_checkpoint

# What a training writes into RUN_DIR (rank 0 only); TENSORBOARD_DIR only when asked for.
RUN_FILES = ("config.json", "latest.pth", "best.pth", "epochs.csv", "log.jsonl")
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
# Dotted config keys recorded for information, left out of the comparison (see the module docstring).
INFORMATION_ONLY = frozenset({"data.store", "hparams.num_workers", "hparams.log_interval",
                              "hparams.checkpoint_interval", "hparams.tensorboard"})


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


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What ``prepare_run_dir`` decided: the run's ``config`` (the recorded seed filled in), the
    checkpoint to continue from (None: a new run), and whether a new run ``replaces`` another run's
    files in RUN_DIR (they stay until its first checkpoint: ``msg3d.engine.saver``)."""

    config: dict
    resume_from: Path | None = None
    replaces: bool = False


def prepare_run_dir(out, config, *, seed_given, resume=False, force=False, auto_resume=False):
    """Check RUN_DIR against ``config`` and decide what to do (rank 0, holding ``lock_run_dir(out)``):
    a ``RunPlan``. Says on stderr when it resumes, and why it starts a new run over a folder's files.

    ValueError naming the differing keys (dotted, old -> new) or the unreadable file when the rules
    of the module docstring refuse; FileNotFoundError for ``resume`` without a checkpoint.
    """
    if sum((resume, force, auto_resume)) > 1:
        raise ValueError("--resume, --auto-resume and --force exclude each other")
    out = Path(out)
    config_path, latest = out / "config.json", out / "latest.pth"
    old, old_problem = _read_config_json(config_path)
    recorded, latest_problem = _recorded_config(latest)
    if not seed_given:
        # no --seed: a rerun in the same folder reuses the recorded seed, so it reproduces that run
        for source in (old, recorded):
            if source is not None and "seed" in source:
                config = dict(config, seed=source["seed"])
                break
    replaces = any((out / name).exists() for name in (*RUN_FILES, TENSORBOARD_DIR))
    if force:
        if replaces:
            _stderr(f"--force: starting a new run in {out}; the files there are replaced once it has written its "
                "first checkpoint")
        return RunPlan(config, None, replaces)
    mode = "--resume: " if resume else "--auto-resume: " if auto_resume else ""
    refusal = _refusal(out, config, old, old_problem, recorded, latest_problem)
    if refusal is None and recorded is not None:
        _stderr(f"{mode}{latest} has the same config; resuming" + ("" if mode else " (--force starts a new run)"))
        return RunPlan(config, latest, False)
    if resume and refusal is None:
        raise FileNotFoundError(f"--resume: no checkpoint {latest} to resume from")
    if auto_resume:
        if refusal is None:
            why = f"no checkpoint {latest}"
        else:
            what, diffs, _ = refusal
            why = what + (": " + "; ".join(diffs) if diffs else "")
        _stderr(f"--auto-resume: {why}; starting fresh")
        return RunPlan(config, None, replaces)
    if refusal is not None:
        what, diffs, advice = refusal
        listed = ":\n  " + "\n  ".join(diffs) if diffs else ""
        raise ValueError(f"{mode}{what}{listed}\n{advice}")
    if old is not None:
        _stderr(f"{out} has no checkpoint of its run yet ({latest}); starting it again")
    return RunPlan(config, None, replaces)


def _stderr(message):
    print(f"msg3d train: {message}", file=sys.stderr, flush=True)


def _read_config_json(path):
    """``(config.json's content, None)``, ``(None, why it is unusable)``, or ``(None, None)`` if absent."""
    if not path.exists():
        return None, None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{path} is not valid JSON ({exc})"
    if not isinstance(content, dict):
        return None, f"{path} holds no JSON object"
    return content, None


def _recorded_config(latest):
    """``(the config latest.pth records, None)``, ``(None, why it cannot be resumed)``, or ``(None,
    None)`` when there is no latest.pth."""
    if not latest.exists():
        return None, None
    try:
        _, others, _ = read_checkpoint(latest)
    except (ValueError, OSError) as exc:
        return None, str(exc)
    meta = others.get("meta")
    recorded = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(recorded, dict):
        return None, f"{latest} records no run config (meta.config): not a latest.pth written by msg3d train"
    return recorded, None


_ADVICE = ("rerun with the same settings to resume it, use another --out, or add --force to start a new run "
           "(the folder's files are replaced once it has written its first checkpoint)")


def _refusal(out, config, old, old_problem, recorded, latest_problem):
    """Why the run in ``out`` cannot be continued with ``config``: ``(what, differences, advice)``,
    or None when it can be (a checkpoint with the same config), or when there is nothing to continue
    and nothing that contradicts ``config``."""
    config_path, latest = out / "config.json", out / "latest.pth"
    if latest_problem is not None:
        return latest_problem, [], "add --force to start a new run"
    if old is not None and (diffs := config_differences(old, config)):
        return f"{out} holds a run with a different config ({config_path})", diffs, _ADVICE
    if recorded is not None and (diffs := config_differences(recorded, config)):
        than = config_path if old is not None else "this run"
        return (f"{latest} records another config (its meta.config) than {than}", diffs,
                "they were written by different runs; add --force to start a new run")
    if recorded is None and old_problem is not None:
        return old_problem, [], "add --force to start a new run"
    return None


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
