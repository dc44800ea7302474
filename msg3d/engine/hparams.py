"""Training hyper-parameters: PYSKL's MS-G3D recipe as defaults (REFERENCE §5), validated.

A run's hyper-parameters are the defaults below with a user's YAML/JSON mapping merged over them
(``model`` is merged key by key). Unknown keys, wrong types and out-of-range values are errors that
name the key, so a typo never silently trains with a default.

Keys beyond the recipe: ``log_interval`` (iterations between ``log.jsonl`` lines and progress
lines; PYSKL logs every 100) and ``checkpoint_interval`` (also write ``latest.pth`` every that many
iterations; 0 = only at the end of each epoch, as PYSKL).
"""

import copy
import json
import math
from pathlib import Path

import yaml

DEFAULTS = {
    "epochs": 16,
    "repeat": 5,
    "batch_size": 16,  # per process
    "lr": 0.1,  # for a global batch of lr_batch; scaled linearly with the actual global batch
    "lr_batch": 128,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "clip_len": 100,
    "val_clips": 1,
    "num_workers": 2,
    "log_interval": 100,
    "checkpoint_interval": 0,
    "model": {"base_channels": 96, "num_gcn_scales": 13, "num_g3d_scales": 6},
}

# key -> (kind, minimum, whether the minimum itself is allowed)
_RULES = {
    "epochs": ("int", 1, True),
    "repeat": ("int", 1, True),
    "batch_size": ("int", 1, True),
    "lr": ("float", 0.0, False),
    "lr_batch": ("int", 1, True),
    "momentum": ("float", 0.0, True),
    "nesterov": ("bool", None, None),
    "weight_decay": ("float", 0.0, True),
    "clip_len": ("int", 1, True),
    "val_clips": ("int", 1, True),
    "num_workers": ("int", 0, True),
    "log_interval": ("int", 1, True),
    "checkpoint_interval": ("int", 0, True),
    "model.base_channels": ("int", 1, True),
    "model.num_gcn_scales": ("int", 1, True),
    "model.num_g3d_scales": ("int", 1, True),
}


def _coerce(name, value, kind, minimum, inclusive):
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"hyper-parameter {name!r} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"hyper-parameter {name!r} must be an integer, got {value!r}")
    else:
        # PyYAML reads "1e-3" (no dot) as a string; accept any number spelled as text.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"hyper-parameter {name!r} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"hyper-parameter {name!r} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"hyper-parameter {name!r} must be finite, got {value!r}")
    if value < minimum or (value == minimum and not inclusive):
        bound = ">=" if inclusive else ">"
        raise ValueError(f"hyper-parameter {name!r} must be {bound} {minimum}, got {value!r}")
    return value


def resolve_hparams(overrides=None):
    """Return a full, validated hyper-parameter dict: ``overrides`` merged over ``DEFAULTS``."""
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise ValueError(f"hyper-parameters must be a mapping of names to values, got {type(overrides).__name__}")
    hp = copy.deepcopy(DEFAULTS)
    for key, value in overrides.items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown hyper-parameter {key!r}; known: {', '.join(sorted(DEFAULTS))}")
        if key == "model":
            if not isinstance(value, dict):
                raise ValueError(f"hyper-parameter 'model' must be a mapping, got {value!r}")
            for sub, subvalue in value.items():
                if sub not in DEFAULTS["model"]:
                    raise ValueError(
                        f"unknown hyper-parameter 'model.{sub}'; known: "
                        + ", ".join(f"model.{k}" for k in sorted(DEFAULTS["model"]))
                    )
                hp["model"][sub] = subvalue
        else:
            hp[key] = value
    for name, rule in _RULES.items():
        if name.startswith("model."):
            sub = name.split(".", 1)[1]
            hp["model"][sub] = _coerce(name, hp["model"][sub], *rule)
        else:
            hp[name] = _coerce(name, hp[name], *rule)
    if hp["momentum"] >= 1:
        raise ValueError(f"hyper-parameter 'momentum' must be < 1, got {hp['momentum']!r}")
    if hp["nesterov"] and hp["momentum"] == 0:
        raise ValueError("hyper-parameter 'nesterov' needs a momentum > 0")
    return hp


def load_hparams(path=None, json_text=None):
    """Read user hyper-parameters from a YAML/JSON file or a JSON string and resolve them."""
    if path is not None and json_text is not None:
        raise ValueError("give either a hyper-parameter file or a JSON string, not both")
    overrides = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"hyper-parameter file not found: {path}")
        try:
            overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot parse hyper-parameter file {path}: {exc}") from None
        if overrides is None:
            overrides = {}
        where = f" in {path}"
    elif json_text is not None:
        try:
            overrides = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"cannot parse --hparams-json {json_text!r}: {exc}") from None
        where = " in --hparams-json"
    else:
        return resolve_hparams()
    try:
        return resolve_hparams(overrides)
    except ValueError as exc:
        raise ValueError(f"{exc}{where}") from None


def scaled_lr(hp, world_size):
    """The learning rate actually used: linear scaling to the global batch (PYSKL README)."""
    return hp["lr"] * hp["batch_size"] * world_size / hp["lr_batch"]
