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

For tests and small experiments, ``derive_annotations(data, out_dir, layout, modality)`` builds
a store straight from an in-memory annotation dict; ``sample_features`` gives one sample's array.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from msg3d.data.features import FEATURES, PYSKL, get_features
from msg3d.data.modality import MODALITIES, PreNormalize2D, PreNormalize3D, derive_modality
from msg3d.data.pyskl_io import load_annotations, validate_annotations
from msg3d.data.store import StoreWriter
from msg3d.fileio import sha256_file
from msg3d.layouts import LAYOUTS, get_layout

MAX_PERSON = 2
STORE_CHANNELS = 3  # 3D: x, y, z; 2D: x, y, score
PROGRESS_SECONDS = 5.0


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
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    validate_annotations(data, source=(source or {}).get("name", "<annotations>"), num_classes=num_classes)
    annotations = data["annotations"]
    check_layout(annotations, layout)
    if num_classes is None:
        num_classes = data.get("num_classes", max(int(a["label"]) for a in annotations) + 1)

    total, start, last = len(annotations), time.monotonic(), time.monotonic()
    with StoreWriter(out_dir, num_joints=layout.num_joints, channels=STORE_CHANNELS) as writer:
        for i, ann in enumerate(annotations):
            writer.append(ann["frame_dir"], ann["label"], sample_features(ann, layout, modality, features))
            now = time.monotonic()
            if progress and (now - last >= PROGRESS_SECONDS or i + 1 == total):
                last = now
                print(f"derive {modality}: {i + 1}/{total} samples ({(i + 1) / max(now - start, 1e-9):.0f}/s)",
                      file=sys.stderr, flush=True)
        writer.finish(
            splits=data["split"],
            meta={
                "layout": layout.name,
                "modality": modality,
                "features": features.name,
                "kind": "3d" if layout.is_3d else "2d",
                "num_classes": int(num_classes),
                "max_person": MAX_PERSON,
                "source": source or {"name": None, "sha256": None},
                "pipeline": pipeline_description(layout, modality, features),
            },
        )
    return Path(out_dir)


def derive(ann_path, out_dir, layout, modality, *, features=PYSKL, num_classes=None, progress=True):
    """Load ``ann_path`` (a PYSKL annotation pickle) and ``derive_annotations`` it into ``out_dir``."""
    ann_path = Path(ann_path)
    data = load_annotations(ann_path, num_classes=num_classes)
    source = {"name": ann_path.name, "sha256": sha256_file(ann_path)}
    return derive_annotations(data, out_dir, layout, modality, features=features, num_classes=num_classes,
                              source=source, progress=progress)


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("annotations", type=Path, help="PYSKL annotation pickle (convert-ntu output or released)")
    parser.add_argument("out_dir", type=Path, help="store folder to write (replaced atomically)")
    parser.add_argument("--layout", required=True, choices=sorted(LAYOUTS), help="skeleton layout")
    parser.add_argument("--modality", required=True, choices=MODALITIES,
                        help="j joint, b bone, jm joint motion, bm bone motion")
    parser.add_argument("--features", choices=sorted(FEATURES), default=PYSKL.name,
                        help="feature convention (default pyskl): "
                        + "; ".join(f"{c.name}: {c.description}" for c in FEATURES.values()))
    parser.add_argument("--num-classes", type=int, help="number of classes (default: max label + 1)")


def run(args):
    out = derive(args.annotations, args.out_dir, args.layout, args.modality, features=args.features,
                 num_classes=args.num_classes)
    print(f"wrote {out}")
    return 0
