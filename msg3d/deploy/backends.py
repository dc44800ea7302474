"""The network of a prediction: a checkpoint through PyTorch, or an exported model through onnxruntime.

Both backends map a batch of clips, float32 ``(N, M, T, V, C)``, to float32 logits
``(N, num_classes)``; ``clip_probs`` turns one sample's clip logits into PYSKL's test score for
either (``average_clips='prob'``: softmax over the classes per clip, then the mean over the clips,
REFERENCE §2.1).

The optional packages (``pip install -e ".[deploy]"``: onnx, onnxruntime, onnxscript) are imported
only where they are used; ``require`` names the missing one. Importing this module loads neither
torch nor onnxruntime: ``OnnxBackend`` runs without torch.
"""

import importlib
from pathlib import Path

import numpy as np

from msg3d.deploy.applied import OPTIONS

DEPLOY_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


class MissingPackage(ValueError):
    """An optional package that a command needs is not installed."""


def require(package, purpose):
    """Import ``package``, or raise ``MissingPackage`` saying what needs it and how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingPackage(
            f"{purpose} needs the Python package {package!r}, which is not installed; install the deploy extra: "
            f"pip install -e \".[deploy]\" ({', '.join(DEPLOY_PACKAGES)})") from None


def build_network(applied, state_dict):
    """The PyTorch recognizer of ``applied`` with the checkpoint's weights, in eval mode.

    Loading is strict (``msg3d.checkpoint.load_checkpoint``); for a checkpoint whose widths come
    from options, the error says how to give the right ones.
    """
    from msg3d.checkpoint import load_checkpoint
    from msg3d.models import build_model

    model = build_model(applied.num_classes, layout=applied.layout, in_channels=applied.channels, **applied.model)
    try:
        load_checkpoint(model, state_dict)
    except ValueError as exc:
        hint = ("\n  (its widths and scales are not recorded; they are PYSKL's unless --hparams / --hparams-json "
                "give others, e.g. '{\"model\": {\"base_channels\": 64}}')") if applied.origin == OPTIONS else ""
        raise ValueError(f"{applied.source}: {exc}{hint}") from None
    return model.eval()


class TorchBackend:
    """A checkpoint's network on the CPU (``build_network``)."""

    def __init__(self, applied, state_dict):
        self.model = build_network(applied, state_dict)

    def logits(self, clips):
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(clips)).float().numpy()


class OnnxBackend:
    """An exported model run by onnxruntime on the CPU; no torch needed."""

    def __init__(self, path):
        ort = require("onnxruntime", "running an ONNX model")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types, for any unreadable model
            raise ValueError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, clips):
        return self.session.run(None, {self.input_name: clips})[0]


def clip_probs(logits):
    """PYSKL's test score of one sample: float64 ``(K,)`` from its clip logits ``(num_clips, K)``."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).mean(axis=0)
