"""Batch samplers: the paper's label distributions, drawn without replacement unless asked."""

import numpy as np
import pytest

from inversion.data.samplers import SAMPLER_NAMES, sample_indices, synthetic_counts

# 5 classes with 6, 6, 6, 2 and 0 images.
TARGETS = np.array([0] * 6 + [1] * 6 + [2] * 6 + [3] * 2)
C = 5


def draw(sampler, k, seed=0, **kw):
    idx = sample_indices(TARGETS, C, k, sampler, rng=np.random.default_rng(seed), **kw)
    return idx, np.bincount(TARGETS[idx], minlength=C)


def test_random_distinct_and_reproducible():
    idx, counts = draw("random", 12)
    assert idx.shape == (12,) and len(set(idx.tolist())) == 12
    assert counts.sum() == 12
    assert np.array_equal(idx, draw("random", 12)[0])
    assert not np.array_equal(idx, draw("random", 12, seed=1)[0])


def test_random_too_many_needs_replacement():
    with pytest.raises(ValueError, match="20 distinct images but the source has 20|replacement"):
        draw("random", 21)
    idx, counts = draw("random", 30, replacement=True)
    assert counts.sum() == 30 and len(set(idx.tolist())) < 30


def test_unique_one_per_class():
    _, counts = draw("unique", 4)
    assert sorted(counts.tolist()) == [0, 1, 1, 1, 1]
    assert counts[4] == 0  # class 4 has no image, so it is never chosen
    with pytest.raises(ValueError, match="only 4 classes"):
        draw("unique", 5)
    with pytest.raises(ValueError, match="K <= number of classes"):
        draw("unique", 6)


@pytest.mark.parametrize("k,n,expected", [(8, 4, [2, 2, 2, 2]), (10, 3, [4, 3, 3]), (12, 2, [6, 6])])
def test_balanced_splits_evenly(k, n, expected):
    _, counts = draw("balanced", k, classes=n)
    assert sorted(counts[counts > 0].tolist(), reverse=True) == expected


def test_balanced_errors():
    with pytest.raises(ValueError, match="client.classes"):
        draw("balanced", 8)
    with pytest.raises(ValueError, match="only 3 classes with enough images"):
        draw("balanced", 12, classes=4)  # 3 per class: class 3 has only 2


def test_extreme_all_one_class():
    idx, counts = draw("extreme", 6)
    assert counts.max() == 6 and (counts > 0).sum() == 1 and len(set(idx.tolist())) == 6
    _, counts = draw("extreme", 2, target_class=3)
    assert counts.tolist() == [0, 0, 0, 2, 0]
    with pytest.raises(ValueError, match="asked for 3 images of class 3 but the source has only 2"):
        draw("extreme", 3, target_class=3)
    idx, counts = draw("extreme", 4, target_class=3, replacement=True)
    assert counts.tolist() == [0, 0, 0, 4, 0] and len(set(idx.tolist())) <= 2


def test_counts_exact_and_errors():
    idx, counts = draw("counts", 5, counts={0: 1, 2: 3, 3: 1})
    assert counts.tolist() == [1, 0, 3, 1, 0] and len(set(idx.tolist())) == 5
    with pytest.raises(ValueError, match="sum to 4 but the batch size is 5"):
        draw("counts", 5, counts={0: 1, 2: 3})
    with pytest.raises(ValueError, match="outside 0..4"):
        draw("counts", 1, counts={7: 1})
    with pytest.raises(ValueError, match="replacement=true"):
        draw("counts", 7, counts={1: 7})
    with pytest.raises(ValueError, match="source has only 0"):
        draw("counts", 1, counts={4: 1}, replacement=True)
    with pytest.raises(ValueError, match="needs explicit per-class counts"):
        draw("counts", 1)


def test_batches_are_shuffled_not_sorted_by_class():
    idx, _ = draw("counts", 12, counts={0: 6, 1: 6})
    assert not np.all(np.diff(TARGETS[idx]) >= 0)


def test_unknown_sampler_lists_choices():
    with pytest.raises(ValueError, match="valid samplers: " + ", ".join(SAMPLER_NAMES)):
        draw("uniform", 3)


@pytest.mark.parametrize(
    "sampler,kw",
    [
        ("random", {}),
        ("unique", {}),
        ("balanced", {"classes": 3}),
        ("extreme", {}),
        ("counts", {"counts": {99: 9}}),
    ],
)
def test_synthetic_counts_sum_to_k(sampler, kw):
    counts = synthetic_counts(100, 9, sampler, rng=np.random.default_rng(0), **kw)
    assert counts.shape == (100,) and counts.sum() == 9 and counts.min() >= 0
    if sampler == "unique":
        assert counts.max() == 1
    if sampler == "extreme":
        assert counts.max() == 9
