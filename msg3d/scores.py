"""The scores format: per-sample class scores of one split, written by ``msg3d test`` (the test
clips' mean softmax) and ``msg3d fuse --out-scores`` (the streams' weighted sum, REFERENCE §7),
read by ``msg3d fuse`` and ``msg3d plot``; PYSKL's own ``result.pkl`` (no samples CSV) is read with
its samples taken from elsewhere (``read_result``). Torch-free.

Files, for ``N`` samples and ``K`` classes (``<stem>`` = the scores path without ``.pkl``)::

    SCORES.pkl             PYSKL's result format (the ``result.pkl`` its ``tools/test.py`` dumps): a
                           pickled plain ``list`` of N numpy vectors of shape (K,) (float32 from
                           ``msg3d test``, the float64 sums from ``msg3d fuse``), in split
                           order (annotation order, as PYSKL's PoseDataset lists a split). Nothing
                           else is pickled, so PYSKL's tools read it as one of their own results.
    <stem>_samples.csv     header ``frame_dir,label``, then one line per sample in the pickle's
                           order: the sample's frame_dir (str) and true label (int). Fusion refuses
                           streams whose lists differ.
    <stem>_per_class.csv   header ``class,support,correct,accuracy,name``, K lines: the class's
                           samples, how many of them top-1 gets right, their ratio (empty when
                           support is 0) and its name (``msg3d.class_names.names_for_num_classes(K)``:
                           NTU RGB+D 60/120, Kinetics-400; empty for other class counts).
    <stem>_confusion.npy   (K, K) int64 counts, row = true class, column = predicted (argmax).
    <stem>_confusion.csv   the same, header ``true\\pred,0,1,...,K-1``, each line led by its true class.
    <stem>_metrics.json    the default metrics path (``msg3d test --metrics`` may name another):
                           ``summary_metrics`` plus what the writer adds (checkpoint, config, ...).

The pickle and the samples CSV make a *stream*, all that fusion and plots read; ``msg3d test``
also writes the per-class, confusion and metrics files, the metrics last, so that its presence
means the rest is complete. CSVs are Python's default dialect (fields quoted only where needed,
``\\n`` line ends, UTF-8), so any frame_dir reads back as written, except that one holding a line
break is refused: one sample per line keeps the line numbers in error messages true.

Scores pickles are read with ``msg3d.safe_pickle`` (lists, numpy arrays and scalars only), so one
from elsewhere cannot run code. Non-finite scores (a diverged or corrupt checkpoint's NaN) are
refused when written and when read: every accuracy computed from them would be meaningless.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msg3d import safe_pickle
from msg3d.class_names import names_for_num_classes
from msg3d.fileio import write_bytes_atomic, write_csv_atomic, write_json_atomic, write_pickle_atomic
from msg3d.metrics import confusion_matrix, mean_class_accuracy, per_class_accuracy, top_k_accuracy

SAMPLES_HEADER = ["frame_dir", "label"]
PER_CLASS_HEADER = ["class", "support", "correct", "accuracy", "name"]


@dataclass(frozen=True)
class ScoresPaths:
    """The files of one scores path (see the module docstring)."""

    scores: Path
    metrics: Path
    samples: Path
    per_class: Path
    confusion_npy: Path
    confusion_csv: Path

    def as_strings(self):
        """``{name: str(path)}`` for a JSON record of the outputs."""
        return {name: str(path) for name, path in vars(self).items()}


def sibling_paths(scores_path, metrics_path=None):
    """The ``ScoresPaths`` of ``scores_path``; the metrics JSON is ``metrics_path`` if given."""
    scores_path = Path(scores_path)
    stem = scores_path.with_suffix("") if scores_path.suffix == ".pkl" else scores_path
    return ScoresPaths(
        scores=scores_path,
        metrics=Path(metrics_path) if metrics_path else Path(f"{stem}_metrics.json"),
        samples=Path(f"{stem}_samples.csv"),
        per_class=Path(f"{stem}_per_class.csv"),
        confusion_npy=Path(f"{stem}_confusion.npy"),
        confusion_csv=Path(f"{stem}_confusion.csv"),
    )


def check_finite(probs, subject, frame_dirs=None, consequence=""):
    """Raise a ValueError unless every score of ``probs`` (N, K) is finite.

    The message reads ``{subject} non-finite scores (NaN or inf) for n of N samples (first: X){consequence}``,
    X being the first such sample's frame_dir (``frame_dirs``, N str) or its index.
    """
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad.size:
        first = frame_dirs[bad[0]] if frame_dirs is not None else f"sample {bad[0]}"
        raise ValueError(f"{subject} non-finite scores (NaN or inf) for {bad.size} of {len(probs)} samples "
                         f"(first: {first}){consequence}")


def summary_metrics(probs, labels):
    """top-1, top-5, mean-class accuracy (fractions, PYSKL's definitions) and the sample count.

    ``probs`` (N, K), ``labels`` (N,) integer class ids.
    """
    top1, top5 = top_k_accuracy(probs, labels, (1, 5))
    return {
        "top1": float(top1),
        "top5": float(top5),
        "mean_class_accuracy": float(mean_class_accuracy(probs, labels)),
        "num_samples": int(len(labels)),
    }


def write_scores(scores_path, probs, frame_dirs, labels, metrics=None, metrics_path=None):
    """Write ``probs`` (N, K) as ``scores_path`` (in its dtype) with its samples CSV; return the ``ScoresPaths``.

    ``frame_dirs`` and ``labels`` (N,) are the samples in the order of ``probs``' rows. With
    ``metrics`` (a JSON-able dict) the per-class and confusion files follow, then ``metrics`` as the
    metrics JSON (``metrics_path``, default ``<stem>_metrics.json``), last. Non-finite scores are a
    ValueError, and nothing is written.
    """
    paths = sibling_paths(scores_path, metrics_path)
    probs = np.asarray(probs)
    frame_dirs = [str(d) for d in frame_dirs]
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(frame_dirs) != len(probs) or labels.shape != (len(probs),):
        raise ValueError(f"{paths.scores}: scores {probs.shape} must be (samples, classes), with one frame_dir "
                         f"and label per sample; got {len(frame_dirs)} frame_dirs and labels {labels.shape}")
    for i, frame_dir in enumerate(frame_dirs):
        if "\n" in frame_dir or "\r" in frame_dir:
            raise ValueError(f"{paths.samples}: frame_dir {frame_dir!r} of sample {i} holds a line break "
                             "(the sample list keeps one sample per line)")
    check_finite(probs, f"{paths.scores}: refusing to write", frame_dirs, "; nothing written")
    write_pickle_atomic(paths.scores, [row.copy() for row in probs])
    write_csv_atomic(paths.samples, SAMPLES_HEADER, zip(frame_dirs, labels.tolist()))
    if metrics is None:
        return paths

    num_classes = probs.shape[1]
    support, correct, accuracy = per_class_accuracy(probs, labels)
    names = names_for_num_classes(num_classes) or [""] * num_classes
    write_csv_atomic(paths.per_class, PER_CLASS_HEADER, (
        [c, int(support[c]), int(correct[c]), "" if np.isnan(accuracy[c]) else repr(float(accuracy[c])), names[c]]
        for c in range(num_classes)))
    cm = confusion_matrix(np.argmax(probs, axis=1), labels, num_classes)
    buf = io.BytesIO()
    np.save(buf, cm)
    write_bytes_atomic(paths.confusion_npy, buf.getvalue())
    write_csv_atomic(paths.confusion_csv, ["true\\pred", *range(num_classes)],
                     ([c, *cm[c].tolist()] for c in range(num_classes)))
    write_json_atomic(paths.metrics, metrics)
    return paths


def _read_probs(path):
    try:
        raw = safe_pickle.load(path, "a scores pickle")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: scores file not found") from None
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list of probability vectors (PYSKL's result format), "
                         f"got {type(raw).__name__}")
    try:
        return np.stack([np.asarray(p, dtype=np.float64).reshape(-1) for p in raw])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: expected a list of equal-length probability vectors ({err})") from None


def _read_samples(path):
    try:
        f = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: sample list not found (msg3d test writes it beside the scores)") from None
    frame_dirs, labels = [], []
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header != SAMPLES_HEADER:
                got = ",".join(header) if header is not None else "an empty file"
                raise ValueError(f"{path}: line 1: expected the header 'frame_dir,label', got {got!r}")
            for row in reader:
                line = reader.line_num
                if len(row) != 2:
                    raise ValueError(f"{path}: line {line}: expected 2 fields (frame_dir,label), got {len(row)}")
                try:
                    labels.append(int(row[1]))
                except ValueError:
                    raise ValueError(f"{path}: line {line}: label {row[1]!r} of sample {row[0]} "
                                     "is not an integer") from None
                frame_dirs.append(row[0])
        except csv.Error as err:
            raise ValueError(f"{path}: line {reader.line_num}: not valid CSV ({err})") from None
    return frame_dirs, np.asarray(labels, dtype=np.int64)


def _checked(scores_path, probs, frame_dirs, labels, samples_source):
    if len(frame_dirs) != len(probs):
        raise ValueError(f"{scores_path}: {len(probs)} score vectors but {len(frame_dirs)} samples in {samples_source}")
    check_finite(probs, f"{scores_path}:", frame_dirs,
                 " (from a diverged or corrupt checkpoint?); refusing to use them")
    return probs, frame_dirs, labels


def read_scores(scores_path):
    """Read a stream: ``(probs (N, K) float64, frame_dirs list of N str, labels (N,) int64)``.

    ``probs`` from the pickle, the samples from the ``<stem>_samples.csv`` beside it; their counts
    must agree and every score must be finite. FileNotFoundError / ValueError name the file (and
    line) at fault.
    """
    paths = sibling_paths(scores_path)
    probs = _read_probs(paths.scores)
    frame_dirs, labels = _read_samples(paths.samples)
    return _checked(paths.scores, probs, frame_dirs, labels, paths.samples)


def read_result(scores_path, frame_dirs, labels, samples_source):
    """Read a scores pickle without a samples CSV (PYSKL's ``result.pkl``), its samples given here.

    ``frame_dirs`` (N str) and ``labels`` (N,) are the samples the pickle's vectors belong to, in
    its order (for PYSKL: the split's annotations in annotation order, ``msg3d.data.pyskl_io.split_samples``);
    ``samples_source`` (str) says where they come from, for messages. Returns what ``read_scores``
    does, with the same checks.
    """
    probs = _read_probs(Path(scores_path))
    return _checked(scores_path, probs, list(frame_dirs), np.asarray(labels, dtype=np.int64), samples_source)


def _position(source, i):
    """Where sample ``i`` sits in a sample list: its line in a samples CSV, else its index."""
    return f"line {i + 2} of {source}" if str(source).endswith(".csv") else f"position {i} of {source}"


def check_same_samples(streams):
    """Raise a ValueError unless all streams list the same samples (and labels) in the same order.

    ``streams`` maps name -> ``(samples source, frame_dirs, labels)``: where the stream's samples
    come from (its ``<stem>_samples.csv``, or what ``read_result`` was given) and the samples as
    ``read_scores`` / ``read_result`` give them; the first stream is the reference.
    """
    (ref_name, (ref_source, ref_dirs, ref_labels)), *others = streams.items()
    for name, (source, dirs, labels) in others:
        if len(dirs) != len(ref_dirs):
            raise ValueError(
                f"streams {ref_name!r} and {name!r} cover different samples: {len(ref_dirs)} in {ref_source}, "
                f"{len(dirs)} in {source}"
            )
        for i, (a, b) in enumerate(zip(ref_dirs, dirs)):
            if a != b:
                raise ValueError(
                    f"streams {ref_name!r} and {name!r} list different samples or a different order: sample {i} "
                    f"is {a} at {_position(ref_source, i)} but {b} at {_position(source, i)}"
                )
        bad = np.flatnonzero(np.asarray(labels) != np.asarray(ref_labels))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"streams {ref_name!r} and {name!r} disagree on the label of sample {ref_dirs[i]}: "
                f"{ref_labels[i]} at {_position(ref_source, i)}, {labels[i]} at {_position(source, i)}"
            )
