"""label_restore.metrics: LeAcc, LnAcc, IRec by hand, as the iLRG paper's code computes them."""

import numpy as np
import pytest
import torch

from label_restore import counts_from_labels, label_metrics, labels_from_counts


def released_metrics(rec_instances, num_instances):
    """The released get_irlg_res, restated without sklearn: accuracy over existences and counts, and
    IRec = sum over the true labels of min(rec, true) / K."""
    existences = [1 if n > 0 else 0 for n in num_instances]
    rec_existences = [1 if n > 0 else 0 for n in rec_instances]
    leacc = np.mean([a == b for a, b in zip(existences, rec_existences)])
    lnacc = np.mean([a == b for a, b in zip(num_instances, rec_instances)])
    labels = [i for i, n in enumerate(num_instances) if n > 0]
    irec = sum(min(rec_instances[i], num_instances[i]) for i in labels) / sum(num_instances)
    return leacc, lnacc, irec


def test_metrics_by_hand_four_classes():
    # classes:      0  1  2  3
    # predicted:    2  1  0  0
    # true:         2  0  1  0     K = 3
    # existence agrees on 0 and 3 -> LeAcc 2/4; counts agree on 0 and 3 -> LnAcc 2/4;
    # IRec = (min(2,2) + min(1,0) + min(0,1) + 0) / 3 = 2/3; count MAE (0 + 1 + 1 + 0) / 4; predicted sum 3 = K
    m = label_metrics([2, 1, 0, 0], [2, 0, 1, 0])
    assert m == {"LeAcc": 0.5, "LnAcc": 0.5, "IRec": pytest.approx(2 / 3), "count_mae": 0.5, "sums_to_k": True}


def test_metrics_by_hand_five_classes():
    # predicted 0 3 1 0 1, true 1 2 1 0 0 (K = 4): existence agrees on 1, 2, 3 -> 3/5;
    # counts agree on 2, 3 -> 2/5; IRec = (0 + 2 + 1 + 0 + 0) / 4; count MAE (1 + 1 + 0 + 0 + 1) / 5;
    # predicted sum 5 != 4
    m = label_metrics(np.array([0, 3, 1, 0, 1]), torch.tensor([1, 2, 1, 0, 0]))
    assert m == {"LeAcc": 0.6, "LnAcc": 0.4, "IRec": 0.75, "count_mae": 0.6, "sums_to_k": False}


def test_metrics_match_the_released_definitions_on_random_counts():
    rng = np.random.default_rng(0)
    for _ in range(100):
        c = int(rng.integers(1, 12))
        true = rng.integers(0, 4, size=c)
        true[rng.integers(c)] += 1
        pred = rng.integers(0, 4, size=c)
        m = label_metrics(pred, true)
        leacc, lnacc, irec = released_metrics(pred.tolist(), true.tolist())
        assert m["LeAcc"] == pytest.approx(leacc) and m["LnAcc"] == pytest.approx(lnacc)
        assert m["IRec"] == pytest.approx(irec)
        assert m["sums_to_k"] == (pred.sum() == true.sum())


def test_perfect_and_empty_predictions():
    assert label_metrics([0, 3, 1], [0, 3, 1]) == {
        "LeAcc": 1.0,
        "LnAcc": 1.0,
        "IRec": 1.0,
        "count_mae": 0.0,
        "sums_to_k": True,
    }
    m = label_metrics([0, 0, 0], [0, 3, 1])
    assert m["LeAcc"] == pytest.approx(1 / 3) and m["LnAcc"] == pytest.approx(1 / 3) and m["IRec"] == 0.0


def test_counts_from_labels():
    assert counts_from_labels([2, 0, 2, 2, 0], 3).tolist() == [2, 0, 3]
    assert counts_from_labels(torch.tensor([1, 1]), 4).tolist() == [0, 2, 0, 0]
    assert counts_from_labels(np.array([], dtype=int), 2).tolist() == [0, 0]
    assert labels_from_counts(counts_from_labels([2, 0, 2, 2, 0], 3)).tolist() == [0, 0, 2, 2, 2]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        counts_from_labels([0, 3], 3)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        counts_from_labels([[0, 1]], 3)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="shape"):
        label_metrics([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        label_metrics([-1, 2], [1, 0])
    with pytest.raises(ValueError, match="K >= 1"):
        label_metrics([1, 0], [0, 0])
    with pytest.raises(ValueError, match="whole numbers"):
        label_metrics([0.5, 0.5], [1, 0])
