"""The inputs of ``msg3d predict``: each path becomes samples in PYSKL's annotation format (REFERENCE §4.1).

* ``NAME.skeleton``: a raw NTU RGB+D file, through PYSKL's conversion and body selection
  (``msg3d.data.ntu_raw.convert_file``, REFERENCE §8.2); its sample is called NAME.
* ``NAME.json``: a Kinetics-skeleton clip (``msg3d.data.kinetics_raw.read_clip``, REFERENCE §14
  steps 2-4); its sample is the video id NAME.
* a folder: its ``.skeleton`` files, or, if it holds none, its ``.json`` clips, sorted by name.
* any other file: a PYSKL annotation pickle, validated (``msg3d.data.pyskl_io.load_annotations``):
  all its samples in annotation order, or those that ``samples`` names (``--sample FRAME_DIR``).

Bad input raises what the conversion raises, naming the file: ``SkeletonFormatError`` with the
line, ``KineticsFormatError`` with the frame, the pickle's problems by ``frame_dir``; a raw file
from which no body survives is a ValueError naming the file (``convert-ntu`` lists it as
``no-bodies``). Torch-free.
"""

from pathlib import Path
from typing import NamedTuple

from msg3d.data.kinetics_raw import read_clip
from msg3d.data.ntu_raw import NoBodiesError, convert_file
from msg3d.data.pyskl_io import load_annotations

SKELETON = ".skeleton"
KINETICS_JSON = ".json"


class Sample(NamedTuple):
    """One sample to predict: ``input`` the file it was read from, ``ann`` its annotation dict
    (``frame_dir``, ``keypoint`` (M, T, V, C), ``total_frames``, and ``keypoint_score`` (M, T, V)
    for 2D keypoints)."""

    input: str
    ann: dict


def raw_sample(path):
    """A raw ``.skeleton`` file as PYSKL converts it: keypoint float16 (M, T, 25, 3), M = 1 or 2."""
    try:
        keypoint = convert_file(path)
    except NoBodiesError as exc:
        raise ValueError(f"{path}: no body to predict from: {exc}") from None
    return Sample(str(path), {"frame_dir": Path(path).name[: -len(SKELETON)], "keypoint": keypoint,
                              "total_frames": keypoint.shape[1]})


def folder_files(folder):
    """A folder's ``.skeleton`` files, or else its ``.json`` clips, sorted by name."""
    for suffix in (SKELETON, KINETICS_JSON):
        files = sorted(p for p in Path(folder).iterdir() if p.name.endswith(suffix) and p.is_file())
        if files:
            return files
    raise FileNotFoundError(f"no {SKELETON} files or Kinetics {KINETICS_JSON} clips in {folder}")


def _file_samples(path, wanted, found):
    if path.name.endswith(SKELETON):
        yield raw_sample(path)
    elif path.name.endswith(KINETICS_JSON):
        yield Sample(str(path), read_clip(path))
    else:
        for ann in load_annotations(path)["annotations"]:
            if not wanted or ann["frame_dir"] in wanted:
                found.add(ann["frame_dir"])
                yield Sample(str(path), ann)


def read_inputs(paths, samples=()):
    """Yield a ``Sample`` per sample of ``paths`` (module docstring), one file at a time.

    ``samples``: frame_dirs to take from the pickles (all when empty); a name that no pickle holds
    is a ValueError once the pickles have been read, and so is ``samples`` without a pickle.
    A path that does not exist is a FileNotFoundError before anything is read.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
    pickles = [p for p in paths if p.is_file() and not p.name.endswith((SKELETON, KINETICS_JSON))]
    wanted = set(samples)
    if wanted and not pickles:
        raise ValueError("--sample names samples of an annotation pickle, but no input is one")
    found = set()
    for path in paths:
        for file in folder_files(path) if path.is_dir() else [path]:
            yield from _file_samples(file, wanted, found)
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(f"sample(s) {', '.join(missing)} not in {', '.join(map(str, pickles))}")
