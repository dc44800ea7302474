"""msg3d.metrics against hand-computed values (PYSKL's definitions, REFERENCE §6)."""

import numpy as np
import pytest

from msg3d.metrics import confusion_matrix, mean_class_accuracy, per_class_accuracy, top_k_accuracy

# 5 samples, 5 classes. Class 3 is only ever predicted (never a label); class 4 is neither.
SCORES = np.array(
    [
        [0.1, 0.6, 0.2, 0.1, 0.0],  # label 1, pred 1
        [0.5, 0.2, 0.2, 0.1, 0.0],  # label 0, pred 0
        [0.3, 0.4, 0.2, 0.1, 0.0],  # label 0, pred 1 (0 is 2nd)
        [0.1, 0.2, 0.3, 0.4, 0.0],  # label 2, pred 3 (2 is 2nd)
        [0.2, 0.1, 0.3, 0.4, 0.0],  # label 1, pred 3 (1 is 4th)
    ]
)
LABELS = np.array([1, 0, 0, 2, 1])


def test_top_k_accuracy_hand_computed():
    assert top_k_accuracy(SCORES, LABELS, (1, 2, 3, 4)) == [2 / 5, 4 / 5, 4 / 5, 1.0]
    # PYSKL's result format: a list of per-sample vectors
    assert top_k_accuracy(list(SCORES), list(LABELS), (1,)) == [2 / 5]


def test_top_k_breaks_ties_like_argsort():
    # argsort puts the later of two equal scores last, so it is the top-1 (PYSKL/mmaction behaviour)
    scores = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert top_k_accuracy(scores, np.array([1, 1]), (1,)) == [1.0]
    assert top_k_accuracy(scores, np.array([0, 0]), (1,)) == [0.0]


def test_mean_class_accuracy_counts_a_class_only_predicted_as_zero():
    # classes in labels or predictions: {0, 1, 2, 3}; recalls 1/2, 1/2, 0/1 and 0 for class 3
    # (predicted twice, never a label); class 4 (never seen) is left out.
    assert mean_class_accuracy(SCORES, LABELS) == pytest.approx((0.5 + 0.5 + 0.0 + 0.0) / 4, abs=0)


def test_mean_class_accuracy_perfect_and_single_class():
    scores = np.eye(3)[[0, 1, 2, 2]]
    assert mean_class_accuracy(scores, np.array([0, 1, 2, 2])) == 1.0
    assert mean_class_accuracy(np.eye(3)[[1, 1]], np.array([0, 0])) == 0.0  # classes {0,1}, both 0


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(np.argmax(SCORES, axis=1), LABELS, 5)
    expected = np.zeros((5, 5), dtype=np.int64)
    for true, pred in [(1, 1), (0, 0), (0, 1), (2, 3), (1, 3)]:
        expected[true, pred] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_per_class_accuracy():
    support, correct, accuracy = per_class_accuracy(SCORES, LABELS)
    np.testing.assert_array_equal(support, [2, 2, 1, 0, 0])
    np.testing.assert_array_equal(correct, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(accuracy[:3], [0.5, 0.5, 0.0])
    assert np.isnan(accuracy[3:]).all()


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="labels must be"):
        top_k_accuracy(SCORES, LABELS[:3])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        mean_class_accuracy(SCORES, np.array([1, 0, 0, 2, 7]))
    with pytest.raises(ValueError, match="scores must be"):
        top_k_accuracy(SCORES[0], LABELS[:1])
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 5], [0, 1], 3)
