"""NTU RGB+D sample names, dataset membership and the official evaluation splits (and the split
names of Kinetics-400).

A sample is named ``SsssCcccPpppRrrrAaaa`` (setup, camera, performer, replication, action; all
1-based). NTU RGB+D 60 is the part with action <= 60. The splits are PYSKL's
(``tools/data/ntu_preproc.py``), which are the official ones:

* ``xsub``: performers in ``XSUB_TRAIN_SUBJECTS`` train, all others validate (NTU60 and NTU120).
* ``xview`` (NTU60): camera 1 validates, cameras 2 and 3 train.
* ``xset`` (NTU120): even setup numbers train, odd ones validate.

The samples on the official "missing skeletons" list (``ntu120_missing.txt``: 535 names, the 302
with action <= 60 being NTU60's list) are not part of either dataset.
"""

import re
from pathlib import Path
from typing import NamedTuple

NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")

# dataset -> largest action number it contains
NUM_ACTIONS = {"ntu60": 60, "ntu120": 120}

SPLIT_NAMES = {
    "ntu60": ("xsub_train", "xsub_val", "xview_train", "xview_val"),
    "ntu120": ("xsub_train", "xsub_val", "xset_train", "xset_val"),
}

# Kinetics-400 (ST-GCN's release, PYSKL's k400 pickles): one benchmark, the release's own parts,
# under PYSKL's split names (train, val)
KINETICS400 = "kinetics400"
KINETICS_SPLITS = ("train", "val")

# Cross-subject training performers (NTU120's 53; the first 20 are NTU60's).
# fmt: off
XSUB_TRAIN_SUBJECTS = frozenset((
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46, 47, 49, 50,
    52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95,
    97, 98, 100, 103,
))
# fmt: on
XVIEW_VAL_CAMERA = 1

_MISSING_FILE = Path(__file__).with_name("ntu120_missing.txt")


class NtuName(NamedTuple):
    setup: int
    camera: int
    performer: int
    replication: int
    action: int


def parse_ntu_name(name):
    """``'S001C002P003R002A013'`` -> ``NtuName(1, 2, 3, 2, 13)``; ValueError for any other string."""
    match = NTU_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not an NTU sample name of the form SsssCcccPpppRrrrAaaa")
    return NtuName(*map(int, match.groups()))


def _check_dataset(dataset):
    if dataset not in NUM_ACTIONS:
        raise ValueError(f"unknown NTU dataset {dataset!r}; expected one of {', '.join(NUM_ACTIONS)}")


def in_dataset(name, dataset):
    """Whether the (valid) sample name belongs to ``dataset`` by its action number."""
    _check_dataset(dataset)
    return 1 <= parse_ntu_name(name).action <= NUM_ACTIONS[dataset]


def official_missing(dataset):
    """The official samples with missing skeletons of ``dataset`` (frozenset of names)."""
    _check_dataset(dataset)
    names = _MISSING_FILE.read_text(encoding="ascii").split()
    return frozenset(n for n in names if parse_ntu_name(n).action <= NUM_ACTIONS[dataset])


def ntu_split(frame_dirs, dataset):
    """The official splits of ``dataset`` over ``frame_dirs``, each list in input order.

    Returns ``{split_name: [frame_dir, ...]}`` with the names in ``SPLIT_NAMES[dataset]``. Names
    whose action is outside the dataset (A > 60 for ntu60) belong to none of its splits; a string
    that is not an NTU sample name raises ValueError.
    """
    _check_dataset(dataset)
    second = "xview" if dataset == "ntu60" else "xset"
    split = {name: [] for name in SPLIT_NAMES[dataset]}
    for frame_dir in frame_dirs:
        n = parse_ntu_name(frame_dir)
        if not 1 <= n.action <= NUM_ACTIONS[dataset]:
            continue
        split["xsub_train" if n.performer in XSUB_TRAIN_SUBJECTS else "xsub_val"].append(frame_dir)
        if dataset == "ntu60":
            train = n.camera != XVIEW_VAL_CAMERA
        else:
            train = n.setup % 2 == 0
        split[f"{second}_train" if train else f"{second}_val"].append(frame_dir)
    return split
