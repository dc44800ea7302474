"""PYSKL/mmcv-format checkpoints: strict loading with clear errors, atomic saving.

A checkpoint file is a dict ``{'meta': ..., 'state_dict': ..., 'optimizer': ...}`` (mmcv 1.x
``save_checkpoint``) whose state_dict uses PYSKL's key names (``backbone.*``, ``cls_head.*``).
A bare state_dict is accepted too. Wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from
``torch.compile``) are removed on load and never written.
"""

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from msg3d.fileio import atomic_path
from msg3d.safe_pickle import NUMPY_GLOBALS, check_numpy_values

_WRAPPER_PARTS = ("module", "_orig_mod")
_MAX_LISTED = 20


def strip_wrapper_prefixes(state_dict):
    """Drop ``module.`` / ``_orig_mod.`` components that DDP and ``torch.compile`` add to key names."""
    out = OrderedDict()
    for key, value in state_dict.items():
        out[".".join(part for part in key.split(".") if part not in _WRAPPER_PARTS)] = value
    return out


def _listing(title, items):
    items = list(items)
    shown = "\n".join(f"    {item}" for item in items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{title} ({len(items)}):\n{shown}{more}"


def _numpy_meta_globals():
    """numpy reconstructors that mmcv checkpoints may hold in ``meta`` (e.g. a np.float64 best score).

    ``msg3d.safe_pickle.NUMPY_GLOBALS``: they only rebuild plain numbers and arrays, under numpy
    1.x (``numpy.core``) and 2.x (``numpy._core``) names. The name ``numpy.ndarray`` gives a token
    that only the guarded ``_reconstruct`` accepts, as calling the class on pickled arguments forges
    object pointers. torch only builds (BUILD) instances of listed types, so the class itself is
    listed too, under a name with a line break: torch reads names from single-line GLOBAL opcodes,
    so no pickle can ask for it, while the arrays ``_reconstruct`` makes can be built. A dtype's
    pickled state can forge object pointers too: ``read_checkpoint`` refuses structured dtypes
    after loading (``safe_pickle.check_numpy_values``).
    """
    named = [(obj, name) for name, obj in NUMPY_GLOBALS.items()]
    return named + [(np.ndarray, "numpy.ndarray\n(built by _reconstruct, never named by a pickle)")]


def read_checkpoint(path_or_state_dict):
    """Return ``(state_dict, other top-level entries, source name for messages)`` of a checkpoint.

    Accepts a file path (loaded on the CPU with ``weights_only=True``), a checkpoint dict or a bare
    state_dict; wrapper prefixes are removed from the keys.
    """
    if isinstance(path_or_state_dict, Mapping):
        obj, source = path_or_state_dict, "the given state_dict"
    else:
        path = Path(path_or_state_dict)
        source = str(path)
        if path.is_dir():
            raise ValueError(f"{path} is a directory, not a checkpoint file")
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        try:
            with torch.serialization.safe_globals(_numpy_meta_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for non-checkpoint files
            raise ValueError(f"{path}: not a loadable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
        check_numpy_values(obj, path, "a checkpoint")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state_dict = obj["state_dict"]
        others = {key: value for key, value in obj.items() if key != "state_dict"}
    elif isinstance(obj, Mapping) and obj and all(isinstance(value, torch.Tensor) for value in obj.values()):
        state_dict, others = obj, {}
    else:
        raise ValueError(
            f"{source}: not a model checkpoint (expected a dict with a 'state_dict' entry, or a state_dict "
            f"of tensors; got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else "") + ")"
        )
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(_listing(f"{source}: state_dict entries that are not tensors", not_tensors))
    return strip_wrapper_prefixes(state_dict), others, source


def load_checkpoint(model, path_or_state_dict, allow_graph_mismatch=False):
    """Load a checkpoint (file path or dict) into ``model`` strictly; return its other entries.

    Raises ``ValueError`` listing missing, unexpected and mis-shaped keys, and, unless
    ``allow_graph_mismatch``, graph buffers (``...A``) that differ from the model's computed graph;
    with ``allow_graph_mismatch=True`` the checkpoint's graphs are adopted, with a warning.
    ``FileNotFoundError`` if the file does not exist. Returns e.g. ``{'meta': ..., 'optimizer': ...}``.
    """
    state_dict, others, source = read_checkpoint(path_or_state_dict)
    target = model.state_dict()
    missing = [key for key in target if key not in state_dict]
    unexpected = [key for key in state_dict if key not in target]
    misshaped = [
        f"{key}: checkpoint {list(state_dict[key].shape)}, model {list(target[key].shape)}"
        for key in target
        if key in state_dict and state_dict[key].shape != target[key].shape
    ]
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match the model ({type(model).__name__}, {len(target)} keys):"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", misshaped)):
            if items:
                parts.append("  " + _listing(title, items))
        raise ValueError("\n".join(parts))

    graph_keys = [name for name, _ in model.named_buffers() if name.split(".")[-1] == "A"]
    differing = [
        f"{key}: max abs difference {(state_dict[key].float() - target[key].float()).abs().max().item():.3g}"
        for key in graph_keys
        if not torch.equal(state_dict[key].to(target[key].dtype), target[key])
    ]
    if differing:
        message = _listing(f"{source}: graph buffers differ from the graphs computed for this layout", differing)
        if not allow_graph_mismatch:
            raise ValueError(message + "\n  (pass allow_graph_mismatch=True to use the checkpoint's graphs)")
        warnings.warn(message + "\n  using the checkpoint's graphs", stacklevel=2)

    model.load_state_dict(state_dict, strict=True)
    return others


def unwrap_model(model):
    """The plain module inside DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        else:
            return model


def save_checkpoint(path, model, optimizer=None, meta=None, **extra):
    """Write ``{'meta', 'state_dict', 'optimizer' (if given), **extra}`` to ``path`` atomically.

    Tensors are moved to the CPU and keys carry no wrapper prefixes, so the file loads into a
    plain model anywhere (and with ``torch.load(weights_only=True)``: keep ``meta`` and ``extra``
    to plain Python values and tensors).
    """
    reserved = {"meta", "state_dict", "optimizer"} & set(extra)
    if reserved:
        raise ValueError(f"save_checkpoint: {sorted(reserved)} are set by the named arguments, not **extra")
    state_dict = strip_wrapper_prefixes(unwrap_model(model).state_dict())
    checkpoint = {
        "meta": {} if meta is None else meta,
        "state_dict": OrderedDict((key, value.detach().cpu()) for key, value in state_dict.items()),
    }
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    checkpoint.update(extra)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)
