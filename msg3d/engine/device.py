"""Device and mixed-precision choices shared by ``msg3d train`` and ``msg3d test``."""

import contextlib

import torch

AMP_MODES = ("bf16",)


def resolve_device(name=None):
    """``None`` -> CUDA when available, else CPU; ValueError for another name or CUDA without one."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; use 'cpu' or 'cuda'")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return torch.device(name)


def check_amp(amp):
    """ValueError unless ``amp`` is None (fp32) or a supported autocast mode (bf16)."""
    if amp is not None and amp not in AMP_MODES:
        raise ValueError(f"unsupported --amp {amp!r}; only {', '.join(repr(m) for m in AMP_MODES)} is supported")


def autocast(device, amp):
    """bf16 autocast on ``device`` when ``amp == 'bf16'``, else a no-op context."""
    check_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
