"""``msg3d predict``: the top-k actions of new skeletons, through the pipeline the model was tested with.

    msg3d predict --checkpoint J.pth [--checkpoint B.pth ... --weights 2,2,1,1] INPUT...
                  [--top-k 5] [--json OUT] [--window W --stride S]
    msg3d predict --onnx J.onnx [--onnx B.onnx ...] INPUT...

INPUT: a raw NTU ``.skeleton`` file, a folder of them, a PYSKL annotation pickle (all samples or
``--sample FRAME_DIR``) or a Kinetics-skeleton ``.json`` clip (``msg3d.deploy.inputs``).

Per sample and stream (checkpoint or ONNX model), exactly what ``msg3d test`` does to a sample of a
store: the input's conversion (``inputs``), the stream's feature convention and modality on the
full sequence (``msg3d.data.derive.sample_features``), its test clips (``UniformSample`` test mode,
``num_clips`` x ``clip_len``: ``msg3d.data.sampling.format_gcn_input``), softmax per clip and the
mean over clips (REFERENCE §2.1, §4.2). Streams are then fused as ``msg3d fuse`` does (REFERENCE
§7: the weighted sum of their probabilities, ``msg3d.report.fusion.fuse_scores``), divided by the
sum of the weights, so that a fused score is still a probability; one stream's is its own. What
each stream needs comes from its checkpoint or ONNX JSON, or for PYSKL's checkpoints from options
(``msg3d.deploy.applied``); all streams must share the layout and the classes.

Output per sample: the top-k classes (label, name, probability) as a table on stdout; with
``--window W --stride S`` one prediction per window (``msg3d.deploy.windows``), as a timeline.
``--json OUT`` writes ``[{"input", "sample", "topk": [{"label", "name", "prob"}, ...]}, ...]``
(plus ``start`` and ``end`` frames per window), atomically, after the last sample. Class names:
NTU RGB+D 60/120 and Kinetics-400 by class count (``msg3d.class_names``), else the label number.
"""

import argparse
import dataclasses
import sys
from typing import NamedTuple

import numpy as np

from msg3d.class_names import label_text
from msg3d.data.derive import sample_features
from msg3d.data.sampling import format_gcn_input, uniform_sample
from msg3d.deploy.applied import (Applied, add_fact_arguments, check_input, check_options, fact_options,
                                  read_applied)
from msg3d.deploy.backends import OnnxBackend, TorchBackend, clip_probs
from msg3d.deploy.inputs import read_inputs
from msg3d.deploy.onnx_export import read_sidecar
from msg3d.deploy.windows import window_annotation, window_bounds
from msg3d.fileio import write_json_atomic
from msg3d.report.fusion import fuse_scores


class Stream(NamedTuple):
    """One model to fuse: its facts (``Applied``), its backend and its fusion weight."""

    applied: Applied
    backend: object  # TorchBackend or OnnxBackend
    weight: float


def _per_stream(values, count, option):
    """One value per stream from a list of one (for all) or ``count`` values; None stays None."""
    if values is None:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ValueError(f"{option} gives {len(values)} values for {count} models (give one, or one per model)")
    return values


def _weights(text):
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 2,2,1,1; got {text!r}") from None


def load_streams(checkpoints=(), onnx=(), weights=None, *, layout=None, modality=None, features=None,
                 hparams=None, num_clips=None):
    """The streams to fuse, in the order given: PyTorch ``checkpoints`` or ONNX models ``onnx``.

    ``weights``: fusion weights, one per model (default 1 each). ``modality``: a list of one
    modality for all models or one per model. ``layout``, ``modality``, ``features``, ``hparams``
    and ``num_clips``: see ``msg3d.deploy.applied.read_applied`` (an ONNX model's JSON records its
    facts, like our checkpoints). Raises ValueError for a model whose facts are missing or do not
    fit, models that do not share layout and classes, and bad weights (``fuse_scores``' rules),
    all before any sample is read.
    """
    if bool(checkpoints) == bool(onnx):
        raise ValueError("give the models to apply either as --checkpoint (PyTorch) or as --onnx (onnxruntime)")
    files = [str(f) for f in (checkpoints or onnx)]
    repeated = sorted({f for f in files if files.count(f) > 1})
    if repeated:
        raise ValueError(f"model(s) given twice: {', '.join(repeated)}")
    modalities = _per_stream(modality, len(files), "--modality")
    weights = _per_stream(weights, len(files), "--weights") if weights is not None else [1.0] * len(files)
    given = {"layout": layout, "features": features}
    streams = []
    for file, stream_modality, weight in zip(files, modalities, weights):
        if checkpoints:
            applied, state_dict = read_applied(file, **given, modality=stream_modality, hparams=hparams,
                                               num_clips=num_clips)
            backend = TorchBackend(applied, state_dict)
        else:
            applied = read_sidecar(file)
            check_options(applied, {**given, "modality": stream_modality}, hparams)
            if num_clips is not None:
                applied = dataclasses.replace(applied, num_clips=num_clips)
            backend = OnnxBackend(file)
        streams.append(Stream(applied, backend, weight))
    first = streams[0].applied
    for stream in streams[1:]:
        other = stream.applied
        if (other.layout, other.num_classes) != (first.layout, first.num_classes):
            raise ValueError(f"the models do not fit together: {first.source} is for layout {first.layout!r} and "
                             f"{first.num_classes} classes, {other.source} for {other.layout!r} and "
                             f"{other.num_classes}")
    # the weights are checked now, by the rules fusion applies, rather than after the first sample
    fuse_scores({s.applied.source: np.zeros((1, first.num_classes)) for s in streams},
                {s.applied.source: s.weight for s in streams})
    return streams


def stream_probs(stream, ann):
    """One stream's test score of one annotation: float64 (num_classes,) (module docstring)."""
    applied = stream.applied
    features = sample_features(ann, applied.layout, applied.modality, applied.features)  # (M, T, V, C)
    try:
        indices = uniform_sample(features.shape[1], applied.clip_len, applied.num_clips, test_mode=True)
    except ValueError as exc:
        raise ValueError(f"{ann['frame_dir']}: {exc}") from None
    clips = format_gcn_input(features, indices, applied.clip_len)  # (num_clips, 2, clip_len, V, C)
    return clip_probs(stream.backend.logits(clips))


def sample_probs(streams, ann):
    """The fused score of one annotation: the weighted mean of the streams' probabilities, (num_classes,)."""
    scores = {s.applied.source: stream_probs(s, ann)[None] for s in streams}
    weights = {s.applied.source: s.weight for s in streams}
    return fuse_scores(scores, weights)[0] / sum(weights.values())


def top_k(probs, k, names):
    """The ``k`` most probable classes, most probable first: ``[{"label", "name", "prob"}, ...]``."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": int(c), "name": names[c] if names else str(c), "prob": float(probs[c])} for c in order]


def predictions(streams, paths, *, samples=(), k=5, window=None, stride=None):
    """Yield ``(Sample, records)`` for each sample of the inputs ``paths`` (``msg3d.deploy.inputs``).

    ``records``: one record (the JSON's) per sample, or per window with ``window`` and ``stride``
    (frames; ``start``/``end`` of the converted sequence, end exclusive). A sample that does not
    fit the models' layout is a ValueError naming the input, the sample and the model.
    """
    if k < 1:
        raise ValueError(f"--top-k must be >= 1, got {k}")
    applied = streams[0].applied
    names, k = applied.class_names, min(k, applied.num_classes)
    for sample in read_inputs(paths, samples):
        for stream in streams:
            check_input(stream.applied, sample.ann, sample.input)
        bounds = [None] if window is None else window_bounds(sample.ann["total_frames"], window, stride)
        records = []
        for bound in bounds:
            ann = sample.ann if bound is None else window_annotation(sample.ann, *bound)
            try:
                probs = sample_probs(streams, ann)
            except ValueError as exc:
                raise ValueError(f"{sample.input}: {exc}") from None
            record = {"input": sample.input, "sample": sample.ann["frame_dir"]}
            if bound is not None:
                record["start"], record["end"] = bound
            records.append({**record, "topk": top_k(probs, k, names)})
        yield sample, records


def format_topk(record, names):
    """A sample's prediction as a small table."""
    lines = [f"{record['input']}  [{record['sample']}]", f"  {'rank':>4}  {'prob':>7}  class"]
    lines += [f"  {rank:>4}  {item['prob']:7.4f}  {label_text(item['label'], names)}"
              for rank, item in enumerate(record["topk"], 1)]
    return "\n".join(lines)


def format_timeline(sample, records, names, window, stride):
    """A long recording's windows, one line each: frame range and top-k."""
    lines = [f"{sample.input}  [{sample.ann['frame_dir']}]: {sample.ann['total_frames']} frames, {len(records)} "
             f"window(s) of {window} frames every {stride}", f"  {'start':>6} {'end':>6}  top-k (end exclusive)"]
    lines += [f"  {r['start']:>6} {r['end']:>6}  "
              + " | ".join(f"{label_text(item['label'], names)} {item['prob']:.3f}" for item in r["topk"])
              for r in records]
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="a raw NTU .skeleton file, a folder of them, a PYSKL annotation pickle or a Kinetics "
                             ".json clip")
    models = parser.add_argument_group("models (one or more streams, fused)")
    models.add_argument("--checkpoint", action="append", default=[], metavar="PTH",
                        help="a checkpoint (ours or PYSKL's), run by PyTorch; repeat for several streams")
    models.add_argument("--onnx", action="append", default=[], metavar="ONNX",
                        help="a model from `msg3d export-onnx` (its JSON beside it), run by onnxruntime; repeat")
    models.add_argument("--weights", type=_weights, default=None, metavar="W1,W2,...",
                        help="fusion weights, one per model in order (default 1 each; PYSKL: 2,2,1,1 for j,b,jm,bm)")
    add_fact_arguments(parser, several=True)
    parser.add_argument("--sample", action="append", default=[], metavar="FRAME_DIR",
                        help="only this sample of the annotation pickle(s); repeat for several")
    parser.add_argument("--top-k", type=int, default=5, help="classes to list per prediction (default 5)")
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the predictions to this JSON file")
    parser.add_argument("--window", type=int, default=None, metavar="W",
                        help="one prediction per window of W frames (a long recording), as a timeline")
    parser.add_argument("--stride", type=int, default=None, metavar="S",
                        help="frames between window starts (default W: windows side by side)")


def run(args):
    if args.stride is not None and args.window is None:
        raise ValueError("--stride needs --window")
    stride = args.window if args.stride is None else args.stride
    streams = load_streams(args.checkpoint, args.onnx, args.weights, **fact_options(args))
    for stream in streams:
        print(f"model {stream.applied.describe()}; weight {stream.weight:g}", file=sys.stderr)
    names = streams[0].applied.class_names
    out = []
    for sample, records in predictions(streams, args.inputs, samples=args.sample, k=args.top_k,
                                       window=args.window, stride=stride):
        if args.window is None:
            print(format_topk(records[0], names), flush=True)
        else:
            print(format_timeline(sample, records, names, args.window, stride), flush=True)
        out += records
    if args.json:
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}: {len(out)} prediction(s)", file=sys.stderr)
    return 0
