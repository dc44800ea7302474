"""``msg3d export-onnx --checkpoint X.pth OUT.onnx [--opset N]``: a self-contained ONNX model.

The file's input ``keypoint`` is the network's float32 ``(N, M, T, V, C)`` tensor and its output
``logits`` float32 ``(N, num_classes)``, with N and T dynamic: the recognizer's forward pass only;
the normalisation, modality, clip sampling and clip averaging stay with the consumer, as
``msg3d predict --onnx`` does them. Beside it, ``OUT.onnx.json`` (``sidecar_path``) says what a
consumer needs: layout and joint order, modality, feature convention and normalisation, clip
length and test clips, class names, the checkpoint it came from (``msg3d.deploy.applied``).

How: PyTorch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs onnxscript);
its TorchScript exporter fails on this model (the custom autograd Function, ``unfold``). The
export runs on a copy whose graph convolutions all aggregate before they project
(``msg3d.models.gcn.MSGCN.project_first`` off): that order takes the windows of the whole batch
with one ``unfold``, whereas the CPU's project-first order steps through the sequences in Python,
which the exporter unrolls for the example's batch, silently fixing N. The two orders commute
(the same numbers up to float rounding), and the export is checked against the model as it runs.

Verification before success: onnxruntime runs the file at batch sizes 1 and 3 and at ``clip_len``
and ``clip_len + 7`` frames, and must match PyTorch's logits within ``TOLERANCE`` (1e-4) and give
different logits for different inputs. Otherwise the command fails and writes nothing (the model
goes through ``msg3d.fileio.atomic_path``; its JSON is written after it, and the model is removed
again if that fails). The inputs are random with the per-feature mean and variance that the
model's input normalisation recorded from its training data (``data_bn``'s running statistics),
so the logits have the scale of real ones: standard-normal inputs push a trained model's logits to
~100, where float32 rounding alone approaches 1e-4.

Needs the deploy extra (``pip install -e ".[deploy]"``: onnx, onnxruntime, onnxscript); a missing
package is named before any work.
"""

import contextlib
import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from msg3d.data.derive import pipeline_description
from msg3d.data.features import get_features
from msg3d.deploy.applied import Applied, add_fact_arguments, fact_options, read_applied
from msg3d.deploy.backends import DEPLOY_PACKAGES, OnnxBackend, build_network, require
from msg3d.fileio import atomic_path, sha256_file, write_json_atomic
from msg3d.layouts import get_layout

FORMAT = "msg3d-onnx"
FORMAT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "keypoint", "logits"
TOLERANCE = 1e-4
BATCH_SIZES = (1, 3)
EXTRA_FRAMES = 7  # the second frame count: clip_len + 7 (odd for an even clip_len, so stride-2 rounding is exercised)
VERIFY_SEED = 0


def sidecar_path(onnx_path):
    """The JSON beside an exported model: ``OUT.onnx`` -> ``OUT.onnx.json``."""
    return Path(f"{onnx_path}.json")


def read_sidecar(onnx_path):
    """The ``Applied`` facts recorded beside an exported model; ValueError naming the file if unusable."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `msg3d export-onnx` writes it beside {onnx_path}, and "
                                "predicting needs what it records")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} description (no \"format\": \"{FORMAT}\")")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {info.get('format_version')!r}; this msg3d reads {FORMAT_VERSION}")
    return Applied.from_dict(info.get("applied"), str(onnx_path))


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notices (unrelated torchvision registrations, deprecations inside torch)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def verification_inputs(model, applied):
    """The verification's input batches (module docstring), float32 (N, M, T, V, C) tensors."""
    import torch

    data_bn = model.backbone.data_bn  # feature index m * V * C + v * C + c (REFERENCE §2.2)
    features = (applied.num_person, 1, applied.num_joints, applied.channels)
    mean = data_bn.running_mean.view(features)
    std = data_bn.running_var.clamp(min=0).sqrt().view(features)
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    return [mean + std * torch.randn((batch, applied.num_person, frames, applied.num_joints, applied.channels),
                                     generator=generator)
            for batch in BATCH_SIZES for frames in (applied.clip_len, applied.clip_len + EXTRA_FRAMES)]


def export_program(model, applied, opset=None):
    """The ``torch.onnx.ONNXProgram`` of ``model`` with dynamic N and T (module docstring: how)."""
    import torch

    from msg3d.models.gcn import MSGCN

    batched = copy.deepcopy(model)
    for module in batched.modules():
        if isinstance(module, MSGCN):
            module.project_first = False
    # any values: the example only sets the shapes (batch 2 and T >= 2, as the exporter takes a size
    # of 1 for a constant)
    example = torch.zeros(2, applied.num_person, max(applied.clip_len, 2), applied.num_joints, applied.channels)
    dims = ({0: torch.export.Dim("N", min=1), 2: torch.export.Dim("T", min=1)},)
    with _quiet_exporter():
        return torch.onnx.export(batched, (example,), dynamo=True, input_names=[INPUT_NAME],
                                 output_names=[OUTPUT_NAME], dynamic_shapes=dims, opset_version=opset,
                                 verbose=False)


def verify(onnx_file, model, inputs, tolerance=TOLERANCE):
    """Run ``onnx_file`` with onnxruntime on each of ``inputs`` (float32 (N, M, T, V, C) tensors) and
    compare with ``model``'s logits; return what was checked (batch sizes, frame counts, the largest
    difference). Raises ValueError naming the batch size and frame count of the first disagreement,
    or of a batch whose samples all get the same logits (an output that ignores its input).
    """
    import torch

    backend = OnnxBackend(onnx_file)
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = model(x).numpy()
        got = backend.logits(x.numpy())
        where = f"at batch {x.shape[0]}, {x.shape[2]} frames"
        if got.shape != expected.shape:
            raise ValueError(f"the ONNX model gives logits of shape {got.shape} {where}, PyTorch {expected.shape}")
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:  # NaN included
            raise ValueError(f"the ONNX model's logits differ from PyTorch's by {diff:.3g} {where} "
                             f"(tolerance {tolerance:g})")
        worst = max(worst, diff)
        if x.shape[0] > 1 and not np.abs(got[1:] - got[0]).max() > tolerance:
            raise ValueError(f"the ONNX model's logits do not change with the input {where}")
    return {"batch_sizes": sorted({x.shape[0] for x in inputs}), "frame_counts": sorted({x.shape[2] for x in inputs}),
            "max_abs_diff": worst, "tolerance": tolerance}


def sidecar(applied, checkpoint, opset, verification):
    """What a consumer of the model needs (module docstring), as a JSON object."""
    layout = get_layout(applied.layout)
    names = applied.class_names
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "applied": applied.to_dict(),
        "input": {"name": INPUT_NAME, "dtype": "float32", "axes": ["N", "M", "T", "V", "C"],
                  "shape": ["N", applied.num_person, "T", applied.num_joints, applied.channels]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "axes": ["N", "class"],
                   "shape": ["N", applied.num_classes]},
        "joint_names": list(layout.joint_names),
        "channels": "x, y, z" if layout.is_3d else "x, y, score",
        "pipeline": pipeline_description(layout, applied.modality, applied.features),
        "features": get_features(applied.features).description,
        "test": (f"UniformSample(clip_len={applied.clip_len}, num_clips={applied.num_clips}) test mode "
                 f"(numpy legacy RNG seeded 255) -> FormatGCNInput(num_person={applied.num_person}) -> logits per "
                 "clip -> softmax per clip, mean over clips (PYSKL average_clips='prob')"),
        "class_names": None if names is None else list(names),
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": sha256_file(checkpoint),
                       "facts_from": applied.origin},
        "opset": opset,
        "verification": verification,
    }


def export_onnx(checkpoint, out, *, opset=None, layout=None, modality=None, features=None, hparams=None,
                num_clips=None):
    """Export ``checkpoint`` to ``out`` (and ``sidecar_path(out)``), verified; return the JSON's content.

    The facts (``layout``, ...): as ``msg3d.deploy.applied.read_applied``. Raises
    ``MissingPackage`` for a missing deploy package, ValueError for a failed verification (nothing
    written) and what ``read_applied`` raises.
    """
    for package in DEPLOY_PACKAGES:
        require(package, "msg3d export-onnx")
    import onnx

    applied, state_dict = read_applied(checkpoint, layout=layout, modality=modality, features=features,
                                       hparams=hparams, num_clips=num_clips)
    model = build_network(applied, state_dict)
    out = Path(out)
    with atomic_path(out) as tmp:
        export_program(model, applied, opset).save(tmp, external_data=False)
        try:
            verification = verify(tmp, model, verification_inputs(model, applied))
        except ValueError as exc:
            raise ValueError(f"{checkpoint}: export to {out} failed its check, nothing written: {exc}") from None
        opset_used = next(o.version for o in onnx.load(tmp, load_external_data=False).opset_import if o.domain == "")
    info = sidecar(applied, checkpoint, opset_used, verification)
    try:
        write_json_atomic(sidecar_path(out), info)
    except BaseException:
        out.unlink(missing_ok=True)  # a model without its JSON could not be applied
        raise
    return info


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, metavar="PTH", help="our checkpoint or a PYSKL one")
    parser.add_argument("out", metavar="OUT.onnx", help="the model to write (and OUT.onnx.json beside it)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    add_fact_arguments(parser)


def run(args):
    info = export_onnx(args.checkpoint, args.out, opset=args.opset, **fact_options(args))
    check = info["verification"]
    print(f"wrote {args.out} (opset {info['opset']}; onnxruntime matches PyTorch within {check['max_abs_diff']:.2g} "
          f"at batch sizes {check['batch_sizes']} x frames {check['frame_counts']}) and {sidecar_path(args.out)}",
          )
    return 0
