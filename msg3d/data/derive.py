"""`msg3d derive ANN.pkl OUT_DIR --layout {nturgb+d,coco,openpose} --modality {j,b,jm,bm} [--features NAME]`.

Runs the per-sample preprocessing of a feature convention (``msg3d.data.features``) on each full
sequence. PYSKL's (the default) is exactly what its pipeline does before sampling (REFERENCE
§4.2-4.3): ``PreNormalize3D`` (3D) or ``PreNormalize2D`` (HRNet 2D), then ``GenSkeFeat`` for one
modality. MS-G3D's Kinetics convention takes the converted (x, y, score) as they are (REFERENCE
§14). The result goes, sample by sample, into a derived store (``msg3d.data.store``) that training
and testing memory-map; its meta records the layout, the modality and the convention.

Only the first 2 persons are kept: ``FormatGCNInput(num_person=2)`` drops the others after
sampling, and the 2D operators are per person, so dropping them first gives the same clips
(PreNormalize3D accepts M <= 2 only, except for an all-zero sample, which it leaves alone).

Prepared annotations (the workflow's route). Deriving from the pickle loads and validates all of
it, and each modality of a dataset would do that again (the NTU60 pickle holds 0.9 GB of arrays,
NTU120's 1.8 GB). Instead, ``msg3d derive ANN.pkl PREPARED --layout L --prepare`` loads and checks
the pickle once (``validate_annotations``, then the layout) and writes its samples, as they are, to
the folder ``PREPARED``: shards of about ``SHARD_BYTES`` in memory, each a pickled list of
annotation dicts, and ``index.json`` (format, layout, number of classes and samples, the splits,
the source pickle's name and sha256, the shards in order). ``msg3d derive PREPARED OUT_DIR
--modality M`` then reads one shard at a time: its memory is a shard's, whatever the dataset's size,
and its store is byte for byte the one derived from the pickle (the same samples, pickled once
more, through the same code; the same source recorded in the meta).

For tests and small experiments, ``derive_annotations(data, out_dir, layout, modality)`` builds
a store straight from an in-memory annotation dict; ``sample_features`` gives one sample's array.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from msg3d import safe_pickle
from msg3d.data.features import FEATURES, PYSKL, get_features
from msg3d.data.modality import MODALITIES, PreNormalize2D, PreNormalize3D, derive_modality
from msg3d.data.pyskl_io import load_annotations, validate_annotations
from msg3d.data.store import StoreWriter
from msg3d.fileio import atomic_path, sha256_file, write_json_atomic, write_pickle_atomic
from msg3d.layouts import LAYOUTS, get_layout

MAX_PERSON = 2
STORE_CHANNELS = 3  # 3D: x, y, z; 2D: x, y, score
PROGRESS_SECONDS = 5.0

PREPARED_FORMAT = "msg3d-prepared-annotations"
PREPARED_VERSION = 1
PREPARED_INDEX = "index.json"
SHARD_BYTES = 64 << 20  # memory per shard: what a derive job from prepared annotations holds at a time
SAMPLE_BYTES = 1024  # about what a sample costs in memory besides its arrays: its dict, strings, array headers


def _sample_format(ann):
    kp = ann["keypoint"]
    kind = "2D (C=2 + keypoint_score)" if kp.shape[-1] == 2 else "3D (C=3)"
    return f"{kind} keypoints with {kp.shape[2]} joints"


def check_layout(annotations, layout):
    """Raise ValueError unless every sample's keypoints fit ``layout`` (joints and 2D/3D)."""
    layout = get_layout(layout) if isinstance(layout, str) else layout
    want_channels = 3 if layout.is_3d else 2
    bad = [a for a in annotations
           if a["keypoint"].shape[2] != layout.num_joints or a["keypoint"].shape[-1] != want_channels]
    if bad:
        expected = ("3D (C=3)" if want_channels == 3 else "2D (C=2 + keypoint_score)")
        raise ValueError(
            f"layout {layout.name!r} needs {expected} keypoints with {layout.num_joints} joints, but "
            f"{bad[0]['frame_dir']} has {_sample_format(bad[0])}"
            + (f" (and {len(bad) - 1} more sample(s))" if len(bad) > 1 else "")
            + f"; known layouts: {', '.join(LAYOUTS)}")


def normalize_sample(ann, layout, features=PYSKL):
    """The normalised joints of one annotation -> (M, T', V, 3) array, M <= 2.

    PYSKL's convention: PreNormalize3D / PreNormalize2D; 3D samples must have at most 2 persons
    (PYSKL's PreNormalize3D refuses more), 2D samples keep their first 2. A convention without
    normalisation (MS-G3D's Kinetics) stacks (x, y, score) of the first 2 persons as float32.
    """
    layout = get_layout(layout) if isinstance(layout, str) else layout
    features = get_features(features)
    try:
        if layout.is_3d:
            keypoint = ann["keypoint"]
            return PreNormalize3D()(keypoint)[0][:MAX_PERSON] if features.normalize else keypoint[:MAX_PERSON]
        keypoint, score = ann["keypoint"][:MAX_PERSON], ann["keypoint_score"][:MAX_PERSON]
        if features.normalize:
            return PreNormalize2D()(keypoint, score, ann.get("img_shape"))
        return np.concatenate([keypoint, np.asarray(score)[..., None]], axis=-1).astype(np.float32)
    except ValueError as exc:
        raise ValueError(f"{ann['frame_dir']}: {exc}") from None


def sample_features(ann, layout, modality, features=PYSKL):
    """One annotation's stored array: float32 (M, T', V, 3), M <= 2 (what ``derive`` appends)."""
    return derive_modality(normalize_sample(ann, layout, features), layout, modality, get_features(features))


def pipeline_description(layout, modality, features=PYSKL):
    layout = get_layout(layout) if isinstance(layout, str) else layout
    features = get_features(features)
    if not features.normalize:
        norm = "(x, y, score) as converted, no normalisation"
    elif layout.is_3d:
        norm = "PreNormalize3D(zaxis=[0, 1], xaxis=[8, 4])"
    else:
        norm = "PreNormalize2D(img_shape=sample img_shape or (1080, 1920), threshold=0.01)"
    return (f"{norm} -> GenSkeFeat(dataset={layout.name!r}, feats=[{modality!r}]) under the {features.name!r} "
            f"feature convention, on the full sequence -> first {MAX_PERSON} persons, float32")


def derive_annotations(data, out_dir, layout, modality, *, features=PYSKL, num_classes=None, source=None,
                       progress=True):
    """Derive one modality of a PYSKL annotation dict into a store folder at ``out_dir``.

    ``features``: the feature convention (``msg3d.data.features``: a name or a convention).

    ``data`` is ``{'split': {...}, 'annotations': [...]}`` (validated here); ``num_classes``
    defaults to ``data['num_classes']`` if present, else max label + 1; ``source`` is an optional
    dict recorded in the meta (e.g. ``{'name': ..., 'sha256': ...}``). Written atomically: on
    any error no store is left. Refused with a ValueError naming the source, before any work
    (``validate_annotations``): invalid annotations, labels outside ``[0, num_classes)``;
    ``StoreWriter.finish`` refuses the labels as well, so no store that ``open_store`` would
    refuse is written. Train/val leakage is refused where a release is declared (``import-pyskl
    --dataset``), not here: toy and debugging stores may validate on their training samples.
    Returns ``Path(out_dir)``.
    """
    layout = get_layout(layout) if isinstance(layout, str) else layout
    features = get_features(features)
    _check_modality(modality)
    validate_annotations(data, source=(source or {}).get("name", "<annotations>"), num_classes=num_classes)
    num_classes = _fit(data, layout, num_classes)
    return _write_store(data["annotations"], len(data["annotations"]), out_dir, layout, modality, features,
                        splits=data["split"], num_classes=num_classes, source=source, progress=progress)


def _check_modality(modality):
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")


def _fit(data, layout, num_classes):
    """Check that validated annotations fit ``layout``; return the stores' number of classes:
    ``num_classes``, else ``data['num_classes']``, else max label + 1."""
    annotations = data["annotations"]
    check_layout(annotations, layout)
    if num_classes is None:
        num_classes = data.get("num_classes", max(int(a["label"]) for a in annotations) + 1)
    return int(num_classes)


def _write_store(annotations, total, out_dir, layout, modality, features, *, splits, num_classes, source,
                 progress):
    """Derive ``modality`` of each of the ``total`` checked annotations (an iterable, read once)
    into a store at ``out_dir``; ``splits``: name -> frame_dirs."""
    start, last = time.monotonic(), time.monotonic()
    with StoreWriter(out_dir, num_joints=layout.num_joints, channels=STORE_CHANNELS) as writer:
        for i, ann in enumerate(annotations):
            writer.append(ann["frame_dir"], ann["label"], sample_features(ann, layout, modality, features))
            now = time.monotonic()
            if progress and (now - last >= PROGRESS_SECONDS or i + 1 == total):
                last = now
                print(f"derive {modality}: {i + 1}/{total} samples ({(i + 1) / max(now - start, 1e-9):.0f}/s)",
                      file=sys.stderr, flush=True)
        writer.finish(
            splits=splits,
            meta={
                "layout": layout.name,
                "modality": modality,
                "features": features.name,
                "kind": "3d" if layout.is_3d else "2d",
                "num_classes": num_classes,
                "max_person": MAX_PERSON,
                "source": source or {"name": None, "sha256": None},
                "pipeline": pipeline_description(layout, modality, features),
            },
        )
    return Path(out_dir)


def _source(ann_path):
    """What a store's meta records of the annotation pickle it comes from."""
    return {"name": ann_path.name, "sha256": sha256_file(ann_path)}


def derive(ann_path, out_dir, layout, modality, *, features=PYSKL, num_classes=None, progress=True):
    """Load ``ann_path`` (a PYSKL annotation pickle) and ``derive_annotations`` it into ``out_dir``."""
    ann_path = Path(ann_path)
    data = load_annotations(ann_path, num_classes=num_classes)
    return derive_annotations(data, out_dir, layout, modality, features=features, num_classes=num_classes,
                              source=_source(ann_path), progress=progress)


def prepare_annotations(ann_path, out_dir, layout, *, num_classes=None, shard_bytes=SHARD_BYTES):
    """Check the annotation pickle ``ann_path`` once and write it as prepared annotations (module
    docstring) to the folder ``out_dir``, atomically; returns ``Path(out_dir)``.

    Refused with the errors of ``derive_annotations`` (invalid annotations, a layout they do not
    fit), before anything is written. ``num_classes``: as there; recorded for the stores.
    """
    ann_path = Path(ann_path)
    layout = get_layout(layout) if isinstance(layout, str) else layout
    data = load_annotations(ann_path, num_classes=num_classes)
    num_classes = _fit(data, layout, num_classes)
    shards = []
    with atomic_path(out_dir, is_dir=True) as tmp:
        for samples in _shards(data["annotations"], shard_bytes):
            name = f"shard-{len(shards):05d}.pkl"
            write_pickle_atomic(tmp / name, samples)
            shards.append({"file": name, "samples": len(samples)})
        write_json_atomic(tmp / PREPARED_INDEX, {
            "format": PREPARED_FORMAT,
            "format_version": PREPARED_VERSION,
            "layout": layout.name,
            "num_classes": num_classes,
            "num_samples": len(data["annotations"]),
            "source": _source(ann_path),
            "split": data["split"],
            "shards": shards,
        }, indent=None)
    return Path(out_dir)


def _shards(annotations, shard_bytes):
    """``annotations`` cut into consecutive lists of about ``shard_bytes`` each in memory: their
    arrays and ``SAMPLE_BYTES`` per sample (which bounds a shard of many tiny samples too)."""
    shard, size = [], 0
    for ann in annotations:
        shard.append(ann)
        size += SAMPLE_BYTES + sum(value.nbytes for value in ann.values() if isinstance(value, np.ndarray))
        if size >= shard_bytes:
            yield shard
            shard, size = [], 0
    if shard:
        yield shard


def _rebuild(folder):
    return f"rebuild it with `msg3d derive ANN.pkl {folder} --layout LAYOUT --prepare`"


def read_prepared(folder):
    """The ``index.json`` of the prepared annotations ``folder`` (a dict; module docstring).

    ``FileNotFoundError`` if ``folder`` is not a folder; ``ValueError`` naming it if it holds no
    readable index of this format (not prepared, damaged, or from another version).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"prepared annotations not found: {folder} (make them with `msg3d derive ANN.pkl "
                                f"{folder} --layout LAYOUT --prepare`)")
    try:
        index = json.loads((folder / PREPARED_INDEX).read_bytes())
        known = index["format"] == PREPARED_FORMAT and index["format_version"] == PREPARED_VERSION
        shards = sum(shard["samples"] for shard in index["shards"])
        fits = (shards == index["num_samples"] and index["layout"] in LAYOUTS and isinstance(index["split"], dict)
                and isinstance(index["num_classes"], int))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{folder}: not prepared annotations, or damaged: cannot read {PREPARED_INDEX} "
                         f"({type(exc).__name__}: {exc}); {_rebuild(folder)}") from None
    if not known or not fits:
        raise ValueError(f"{folder}: {PREPARED_INDEX} is not an index of {PREPARED_FORMAT} version "
                         f"{PREPARED_VERSION}, or is damaged; {_rebuild(folder)}")
    return index


def _prepared_samples(folder, index):
    """The annotation dicts of prepared annotations, in order, one shard in memory at a time."""
    for shard in index["shards"]:
        path = Path(folder) / shard["file"]
        samples = safe_pickle.load(path, "a shard of prepared annotations")
        if not isinstance(samples, list) or len(samples) != shard["samples"]:
            raise ValueError(f"{path}: damaged shard, {PREPARED_INDEX} says it holds {shard['samples']} samples; "
                             f"{_rebuild(folder)}")
        yield from samples
        del samples  # this shard is freed before the next one is read


def derive_prepared(folder, out_dir, modality, *, features=PYSKL, layout=None, progress=True):
    """Derive one modality of the prepared annotations ``folder`` into a store at ``out_dir``:
    the store ``derive`` makes of the pickle they were prepared from, in a shard's memory.

    ``layout`` (optional) must be the one they were prepared for (a ValueError otherwise); errors
    of ``read_prepared``, a ValueError naming a damaged shard, and those of ``derive_annotations``.
    """
    features = get_features(features)
    index = read_prepared(folder)
    prepared = get_layout(index["layout"])
    name = layout if layout is None or isinstance(layout, str) else layout.name
    if name is not None and name != prepared.name:
        raise ValueError(f"{folder} was prepared for layout {prepared.name!r}, not {name!r}")
    _check_modality(modality)
    return _write_store(_prepared_samples(folder, index), index["num_samples"], out_dir, prepared, modality,
                        features, splits=index["split"], num_classes=index["num_classes"], source=index["source"],
                        progress=progress)


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("annotations", type=Path,
                        help="PYSKL annotation pickle (convert-ntu output or released), or a folder of prepared "
                             "annotations (--prepare)")
    parser.add_argument("out_dir", type=Path,
                        help="store folder to write, or with --prepare the prepared annotations (replaced atomically)")
    parser.add_argument("--prepare", action="store_true",
                        help="check the pickle once and write it as prepared annotations, from which each modality "
                             "derives in a bounded memory (no --modality)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS),
                        help="skeleton layout (needed with a pickle; prepared annotations record theirs)")
    parser.add_argument("--modality", choices=MODALITIES, help="j joint, b bone, jm joint motion, bm bone motion")
    parser.add_argument("--features", choices=sorted(FEATURES),
                        help=f"feature convention (default {PYSKL.name}): "
                        + "; ".join(f"{c.name}: {c.description}" for c in FEATURES.values()))
    parser.add_argument("--num-classes", type=int,
                        help="number of classes (default: max label + 1); read from a pickle, recorded when prepared")


def run(args):
    from_pickle = args.prepare or not args.annotations.is_dir()
    if args.prepare and (args.modality or args.features):
        raise ValueError("--prepare writes the checked samples, no modality: leave out --modality and --features")
    if not args.prepare and args.modality is None:
        raise ValueError("--modality is required (or --prepare)")
    if from_pickle and args.layout is None:
        raise ValueError(f"--layout is required with an annotation pickle ({args.annotations})")
    if not from_pickle and args.num_classes is not None:
        raise ValueError(f"--num-classes: {args.annotations} holds prepared annotations, whose number of classes "
                         "was set when they were prepared")
    features = args.features or PYSKL.name
    if args.prepare:
        out = prepare_annotations(args.annotations, args.out_dir, args.layout, num_classes=args.num_classes)
    elif from_pickle:
        out = derive(args.annotations, args.out_dir, args.layout, args.modality, features=features,
                     num_classes=args.num_classes)
    else:
        out = derive_prepared(args.annotations, args.out_dir, args.modality, features=features, layout=args.layout)
    print(f"wrote {out}")
    return 0
