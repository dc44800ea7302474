"""The run-folder policy of ``msg3d train``: start fresh, resume, or refuse (``--resume``,
``--auto-resume``, ``--force``), decided by comparing the new config with RUN_DIR/config.json.

Rules:
* no flag: a folder whose config.json differs is refused (use another --out, --resume or --force);
  one with the same config starts over;
* ``--resume``: continue from latest.pth; a changed config is refused unless ``--force``;
* ``--auto-resume`` (PYSKL's habit, for workflows): resume when latest.pth exists and config.json
  equals the new config, code digest included; otherwise start over, saying why on stderr;
* without ``--seed``, a run in a folder with a recorded seed reuses it, so it reproduces that run.
"""

import json
import sys
from pathlib import Path

# The files a training writes into RUN_DIR besides config.json (rank 0 only).
RUN_FILES = ("latest.pth", "best.pth", "epochs.csv", "log.jsonl")


def prepare_run_dir(out, config, *, seed_given, resume, force, auto_resume=False):
    """Check RUN_DIR against ``config`` and decide what to do (rank 0 only).

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
        if not latest.exists():
            why = f"no checkpoint {latest}"
        elif old is None:
            why = f"no readable {config_path} to compare the config with"
        else:
            diffs = config_differences(old, config)
            if not diffs:
                print(f"msg3d train: --auto-resume: {latest} has the same config; resuming", file=sys.stderr)
                return config, latest
            why = f"config differs from {config_path}: " + "; ".join(diffs)
        print(f"msg3d train: --auto-resume: {why}; starting fresh", file=sys.stderr)
        return config, None
    if resume:
        if not latest.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {latest} to resume from")
        if old is not None:
            diffs = config_differences(old, config)
            if diffs and not force:
                raise ValueError(
                    f"--resume: the config differs from {config_path}:\n  " + "\n  ".join(diffs)
                    + "\nresume with the same settings, or add --force to resume anyway"
                )
        return config, latest
    if old is not None and not force:
        diffs = config_differences(old, config)
        if diffs:
            raise ValueError(
                f"{out} holds a run with a different config ({config_path}):\n  " + "\n  ".join(diffs)
                + "\nuse another --out, --resume with the same settings, or --force to overwrite it"
            )
    return config, None


def config_differences(old, new, prefix=""):
    """Dotted keys whose values differ between two config dicts."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif a != b:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs


def remove_stale_temporaries(out):
    """Delete the temporaries of atomic writes that a killed run could not clean up."""
    for name in ("config.json", *RUN_FILES):
        for stale in Path(out).glob(f".{name}.tmp-*"):
            stale.unlink()
