"""Action class names of NTU RGB+D 60 / 120 and Kinetics-400, by label index.

The names ship as package data in ``msg3d/data/class_names/`` (one name per line in label order,
``#`` lines are comments naming the source):

* ``ntu120.txt``: the dataset authors' list (shahroudy/NTURGB-D README); line k is label k, action
  ``A{k+1:03d}`` (labels are 0-based = AXXX - 1, REFERENCE §4). NTU RGB+D 60 is its first 60 lines.
* ``kinetics400.txt``: yysijie/st-gcn ``resource/kinetics_skeleton/label_name.txt``, the order of
  the Kinetics-skeleton release's ``label_index`` (REFERENCE §14).

Standard library only (no torch), so that reports and plots can use it anywhere.
"""

import functools
import importlib.resources
import operator

# dataset -> (file in msg3d/data/class_names/, names in that file, leading names the dataset uses)
_DATASETS = {
    "ntu60": ("ntu120.txt", 120, 60),
    "ntu120": ("ntu120.txt", 120, 120),
    "kinetics400": ("kinetics400.txt", 400, 400),
}
_BY_NUM_CLASSES = {used: dataset for dataset, (_, _, used) in _DATASETS.items()}
_NTU = ("ntu60", "ntu120")


@functools.cache
def _read(filename, expected):
    """The names in ``filename`` (comment lines skipped), checked to be ``expected`` many."""
    resource = importlib.resources.files("msg3d.data") / "class_names" / filename
    lines = resource.read_text(encoding="utf-8").splitlines()
    names = tuple(line.strip() for line in lines if not line.startswith("#"))
    # A damaged or hand-edited install must not shift every label's name silently.
    blank = names.count("")
    if len(names) != expected or blank:
        raise ValueError(f"{resource}: expected {expected} class names, found {len(names)} lines ({blank} blank)")
    return names


def class_names(dataset):
    """The class names of ``dataset`` as a tuple indexed by 0-based label.

    ``dataset`` is ``'ntu60'`` (60 names), ``'ntu120'`` (120) or ``'kinetics400'`` (400). Raises
    ValueError naming the known datasets for any other value.
    """
    if dataset not in _DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} for class names; expected one of {', '.join(_DATASETS)}")
    filename, in_file, used = _DATASETS[dataset]
    return _read(filename, in_file)[:used]


def names_for_num_classes(num_classes):
    """The class names of the dataset with ``num_classes`` classes, or None if none is known.

    For callers that only know the classifier width: 60 -> NTU RGB+D 60, 120 -> NTU RGB+D 120,
    400 -> Kinetics-400.
    """
    dataset = _BY_NUM_CLASSES.get(num_classes)
    return None if dataset is None else class_names(dataset)


def label_text(label, names):
    """Readable text for the 0-based ``label``: ``'A001 drink water'`` for NTU, the bare name otherwise.

    ``names`` is a tuple from ``class_names``/``names_for_num_classes``; the NTU action code is added
    when it is one of the NTU lists. With ``names=None`` (class count unknown) the text is the label
    number itself, e.g. ``'7'``. Raises ValueError if ``label`` is not an index into ``names``
    (negative labels included: they are never valid and must not wrap around).
    """
    label = operator.index(label)
    if names is None:
        return str(label)
    if not 0 <= label < len(names):
        raise ValueError(f"label {label} is outside 0..{len(names) - 1} ({len(names)} classes)")
    if tuple(names) in (class_names(dataset) for dataset in _NTU):
        return f"A{label + 1:03d} {names[label]}"
    return names[label]
