"""classification_metrics and per_class_metrics against a confusion matrix worked out by hand."""

import math

import numpy as np
import pytest

from mnist_pipeline.metrics import (
    classification_metrics,
    confusion_matrix,
    cross_entropy,
    per_class_metrics,
)

# Three classes, eight samples. Actual (rows) vs predicted (columns):
#            pred 0  pred 1  pred 2
# actual 0      2       1       0
# actual 1      0       2       0
# actual 2      1       1       1
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 0, 1, 2])


def test_confusion_matrix_rows_are_actual_columns_predicted():
    expected = np.array([[2, 1, 0], [0, 2, 0], [1, 1, 1]])
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED, num_classes=3), expected)


def test_classification_metrics_match_hand_worked_values():
    result = classification_metrics(Y_TRUE, Y_PRED, num_classes=3)
    table = per_class_metrics(Y_TRUE, Y_PRED, num_classes=3).set_index("digit")
    # class 0: TP 2, predicted 3, actual 3 -> P 2/3, R 2/3, F1 2/3
    # class 1: TP 2, predicted 4, actual 2 -> P 1/2, R 1,   F1 2*(1/2)/(3/2) = 2/3
    # class 2: TP 1, predicted 1, actual 3 -> P 1,   R 1/3, F1 2*(1/3)/(4/3) = 1/2
    # errors: actual row minus the hit; false positives: predicted column minus the hit
    expected = {0: (2 / 3, 2 / 3, 2 / 3, 3, 1, 1), 1: (1 / 2, 1, 2 / 3, 2, 0, 2),
                2: (1, 1 / 3, 1 / 2, 3, 2, 0)}
    assert list(table.columns) == ["precision", "recall", "f1", "support", "errors",
                                   "false_positives"]
    for label, (precision, recall, f1, support, errors, false_positives) in expected.items():
        scores = table.loc[label]
        assert scores["precision"] == pytest.approx(precision, abs=1e-6)
        assert scores["recall"] == pytest.approx(recall, abs=1e-6)
        assert scores["f1"] == pytest.approx(f1, abs=1e-6)
        assert scores["support"] == support
        assert scores["errors"] == errors
        assert scores["false_positives"] == false_positives
    # every wrong answer is one digit's error and another digit's false positive
    assert table["errors"].sum() == table["false_positives"].sum() == result["errors"]
    assert result == {"accuracy": pytest.approx(5 / 8), "errors": 3}  # headline numbers only


def test_undefined_precision_and_recall_are_zero():
    # class 2 is never predicted (precision 0/0) and never occurs (recall 0/0)
    table = per_class_metrics(np.array([0, 1]), np.array([1, 1]), num_classes=3)
    assert table.loc[2].to_dict() == {"digit": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                      "support": 0, "errors": 0, "false_positives": 0}
    assert table.loc[0, "errors"] == 1 and table.loc[1, "false_positives"] == 1
    assert table.loc[0, "f1"] == 0.0
    assert table.loc[1, "precision"] == pytest.approx(0.5)


def test_cross_entropy_is_mean_negative_log_probability_of_the_true_class():
    probabilities = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.0, 1.0, 0.0]])
    labels = np.array([0, 1, 0])
    # the last sample gives probability 0 to its class: clipped to 1e-7, like Keras
    expected = -(math.log(0.5) + math.log(0.8) + math.log(1e-7)) / 3
    assert cross_entropy(labels, probabilities) == pytest.approx(expected)
    assert cross_entropy(labels, np.eye(3)[labels]) == pytest.approx(0.0, abs=1e-6)


def test_perfect_predictions():
    labels = np.arange(10).repeat(3)
    assert classification_metrics(labels, labels) == {"accuracy": 1.0, "errors": 0}


@pytest.mark.parametrize("y_true, y_pred, message", [
    ([0, 1], [0, 10], "outside 0..9"),
    ([0, -1], [0, 1], "outside 0..9"),
    ([0, 1, 2], [0, 1], "3 labels"),
    ([0.0, 1.0], [0, 1], "integer vector"),
])
def test_bad_labels_are_refused(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.array(y_true), np.array(y_pred))


def test_metrics_module_does_not_import_tensorflow():
    import ast
    import inspect

    import mnist_pipeline.metrics as module
    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "numpy" in imported
    assert not imported & {"tensorflow", "keras"}
