"""Classification metrics on score arrays, as PYSKL computes them (REFERENCE §6). numpy only.

``scores`` is ``(N, K)`` (or a list of N K-vectors: PYSKL's result pickle), ``labels`` is ``(N,)``
integer class ids. Accuracies are plain Python floats in [0, 1].
"""

import numpy as np


def _check(scores, labels):
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (num_samples, num_classes), got shape {scores.shape}")
    if labels.ndim != 1 or len(labels) != len(scores):
        raise ValueError(f"labels must be ({len(scores)},) to match the scores, got shape {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no samples to score")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1] - 1}] for {scores.shape[1]} classes, "
            f"got {labels.min()} .. {labels.max()}"
        )
    return scores, labels.astype(np.int64)


def top_k_accuracy(scores, labels, ks=(1,)):
    """Fraction of samples whose label is among the ``k`` highest scores, for each ``k`` in ``ks``.

    Ranked with ``np.argsort`` like PYSKL/mmaction, so ties break the same way.
    """
    scores, labels = _check(scores, labels)
    order = np.argsort(scores, axis=1)
    result = []
    for k in ks:
        top = order[:, -k:]
        result.append(float((top == labels[:, None]).any(axis=1).mean()))
    return result


def confusion_matrix(y_pred, y_true, num_classes):
    """``(num_classes, num_classes)`` int64 counts; row = true class, column = predicted class."""
    y_pred = np.asarray(y_pred, dtype=np.int64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if y_pred.shape != y_true.shape or y_pred.ndim != 1:
        raise ValueError(f"y_pred {y_pred.shape} and y_true {y_true.shape} must be 1-D of equal length")
    for name, y in (("y_pred", y_pred), ("y_true", y_true)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has class ids outside [0, {num_classes - 1}]")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(scores, labels):
    """Per class: (support, correct, accuracy) arrays of length K; accuracy is NaN for support 0."""
    scores, labels = _check(scores, labels)
    cm = confusion_matrix(np.argmax(scores, axis=1), labels, scores.shape[1])
    support = cm.sum(axis=1)
    correct = np.diag(cm).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    return support, correct, accuracy


def mean_class_accuracy(scores, labels):
    """PYSKL's mean class accuracy: per-class recall (top-1 by argmax) averaged over the classes that
    occur in the labels or the predictions; a class that is only ever predicted counts as 0."""
    scores, labels = _check(scores, labels)
    pred = np.argmax(scores, axis=1)
    support, correct, _ = per_class_accuracy(scores, labels)
    present = np.union1d(labels, pred)
    recall = [correct[c] / support[c] if support[c] else 0.0 for c in present]
    return float(np.mean(recall))
