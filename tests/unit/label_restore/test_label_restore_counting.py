"""label_restore.counting: iLRG's rounding and sum-to-K correction, LLG's greedy counting, ranked filling."""

import heapq

import numpy as np
import pytest

from label_restore.counting import correct_to_sum, greedy_counts, ranked_cycle, round_counts


def released_correction(raw, float_counts, k):
    """The released iLRG code's correction (methods.iLRG), reproduced here only to show its two bugs."""
    err = raw - float_counts
    num_mod = int(raw.sum()) - k
    out = raw.copy()
    if num_mod > 0:
        out[np.argsort(-err)[:num_mod]] -= 1
    elif num_mod < 0:
        out[np.argsort(err)[:num_mod]] += 1  # negative num_mod: all but |num_mod| classes
    return out


def repeated_rule(raw, float_counts, k):
    """The specification, applied round by round: each round takes the min(|delta|, eligible) eligible classes
    with the largest key (recomputed from the current counts), one instance each; repeat until the sum is K."""
    counts, f = raw.copy(), np.nan_to_num(float_counts)
    while counts.sum() != k:
        delta = k - int(counts.sum())
        if delta > 0:
            eligible = np.flatnonzero(raw > 0) if (raw > 0).any() else np.arange(raw.size)
            key = f[eligible] - counts[eligible]
        else:
            eligible = np.flatnonzero(counts > 0)
            key = counts[eligible] - f[eligible]
        chosen = eligible[np.argsort(-key, kind="stable")[: abs(delta)]]
        counts[chosen] += np.sign(delta)
    return counts


def test_round_counts_rule():
    f = np.array([2.4, -0.3, 2.5, 3.5, 9.0, np.nan, np.inf, -np.inf, 0.49])
    # negatives -> 0, round half to even (as np.round), above K=5 -> 0, non-finite -> 0
    assert round_counts(f, 5).tolist() == [2, 0, 2, 4, 0, 0, 0, 0, 0]
    assert round_counts(np.array([5.2, 0.1]), 5).tolist() == [5, 0]  # exactly K is kept (the whole batch)
    assert round_counts(np.array([5.5, 0.1]), 5).tolist() == [0, 0]  # rounds to 6 > K
    # clip=True: above K -> K, everything else the same
    assert round_counts(f, 5, clip=True).tolist() == [2, 0, 2, 4, 5, 0, 0, 0, 0]
    assert round_counts(np.array([5.5, 0.1]), 5, clip=True).tolist() == [5, 0]


def test_one_class_batch_with_a_float_count_above_k_keeps_the_whole_batch():
    # all K = 8 samples of class 1, and the solution overshoots: K + 0.3 rounds to K and is kept either way;
    # K + 0.7 rounds to K + 1, which the paper's raw counts zero, but the sum-to-K step must start from K
    # there, not spread the batch over every class
    for overshoot, raw_class_1 in ((8.3, 8), (8.7, 0)):
        f = np.array([-0.1, overshoot, -0.15, -0.05])
        assert round_counts(f, 8).tolist() == [0, raw_class_1, 0, 0]
        start = round_counts(f, 8, clip=True)
        assert start.tolist() == [0, 8, 0, 0]
        assert correct_to_sum(start, f, 8).tolist() == [0, 8, 0, 0]
    assert correct_to_sum(round_counts(f, 8), f, 8).tolist() == [2, 2, 2, 2]  # what zeroing led to


def test_short_by_two_with_five_eligible_adds_exactly_two_to_the_right_classes():
    raw = np.array([1, 1, 1, 1, 1, 0, 0])
    f = np.array([1.4, 1.1, 1.3, 0.9, 1.45, 0.2, -0.1])
    out = correct_to_sum(raw, f, 7)
    # rounded down the most among present: class 4 (0.45) then class 0 (0.40)
    assert out.tolist() == [2, 1, 1, 1, 2, 0, 0]
    # the released code adds to all but 2 classes (inds[:num_mod] with num_mod = -2): 5 extra, sum 10
    assert released_correction(raw, f, 7).sum() == 10


def test_zero_count_is_never_decremented():
    raw = np.array([3, 0, 2])
    f = np.array([2.6, -0.9, 2.4])  # class 1's "rounding up" (0 - -0.9 = 0.9) is the largest
    out = correct_to_sum(raw, f, 4)
    assert out.tolist() == [2, 0, 2]
    assert released_correction(raw, f, 4).tolist() == [3, -1, 2]  # the released code's bug


def test_ties_go_to_the_lower_class_index():
    assert correct_to_sum(np.array([1, 1, 1]), np.array([1.4, 1.4, 1.4]), 4).tolist() == [2, 1, 1]
    assert correct_to_sum(np.array([2, 2, 2]), np.array([1.6, 1.6, 1.6]), 5).tolist() == [1, 2, 2]


def test_all_raw_counts_zero_uses_all_classes():
    f = np.array([-0.2, 0.3, 0.1, -0.5])
    assert correct_to_sum(np.zeros(4, dtype=int), f, 3).tolist() == [1, 1, 1, 0]  # by float: 1, 2, 0
    # cycling: 6 = one round of 4, then the top 2 again
    assert correct_to_sum(np.zeros(4, dtype=int), f, 6).tolist() == [1, 2, 2, 1]


def test_deficit_larger_than_the_present_classes_cycles_over_them_only():
    raw = np.array([2, 0, 1, 0])
    f = np.array([2.3, 0.1, 0.8, 0.0])
    out = correct_to_sum(raw, f, 10)  # 7 missing, 2 present: 3 rounds each, one more for class 0
    assert out.tolist() == [6, 0, 4, 0]


def test_excess_larger_than_the_classes_cycles_without_going_negative():
    raw = np.array([3, 1, 2])
    f = np.array([2.1, 0.9, 1.2])
    assert correct_to_sum(raw, f, 2).tolist() == [1, 0, 1]
    assert correct_to_sum(raw, f, 1).tolist() == [1, 0, 0]
    assert correct_to_sum(raw, f, 6).tolist() == [3, 1, 2]


def test_correction_matches_the_repeated_rule_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(300):
        c = int(rng.integers(1, 12))
        k = int(rng.integers(1, 30))
        f = rng.normal(k / c, 2.0, size=c)
        if rng.random() < 0.3:
            f = np.round(f * 2) / 2  # exact halves and ties
        raw = round_counts(f, k)
        out = correct_to_sum(raw, f, k)
        assert out.sum() == k and out.min() >= 0
        if (raw > 0).any() and out.sum() > raw.sum():
            assert (out[raw == 0] == 0).all()  # absent classes never receive instances
        assert np.array_equal(out, repeated_rule(raw, f, k)), (raw, f, k)


def sequential_greedy(scores, k, impact):
    """LLG's loop as the reference writes it: argmin, then update the class actually chosen."""
    s = np.array(scores, dtype=float)
    counts = (s < 0).astype(int)
    s[s < 0] -= impact
    for _ in range(k - counts.sum()):
        j = int(np.argmin(s))
        counts[j] += 1
        s[j] -= impact
    return counts


def test_greedy_counts_hand_case():
    raw, counts = greedy_counts(np.array([-3.0, -1.0, 0.5]), 4, impact=-1.0)
    # present {0, 1}: values (-2, 0, 0.5); then class 0 twice (-2 -> -1 -> 0; on the tie 0 vs 0, class 0)
    assert counts.tolist() == [3, 1, 0] and raw.tolist() == [3, 1, 0]


def test_greedy_updates_the_chosen_class():
    # present (-2.5, -2.0) -> (-1.5, -1.0); then class 0 (-> -0.5), class 1 (-> 0.0), class 0 (-> 0.5).
    # Not updating the chosen class (or updating another one) would give class 0 all three: [4, 1, 0].
    _raw, counts = greedy_counts(np.array([-2.5, -2.0, 1.0]), 5, impact=-1.0)
    assert counts.tolist() == [3, 2, 0]
    assert counts.tolist() == sequential_greedy([-2.5, -2.0, 1.0], 5, -1.0).tolist()


def test_greedy_matches_the_sequential_loop_on_random_cases():
    rng = np.random.default_rng(1)
    for _ in range(200):
        c = int(rng.integers(1, 15))
        k = int(rng.integers(1, 40))
        s = rng.normal(0, 1, size=c)
        if rng.random() < 0.3:
            s = np.round(s, 1)  # ties
        impact = -abs(float(rng.normal(0, 1))) if rng.random() < 0.9 else 0.0
        raw, counts = greedy_counts(s, k, impact)
        assert counts.sum() == k and counts.min() >= 0
        if (s < 0).sum() <= k:
            assert np.array_equal(counts, sequential_greedy(s, k, impact))
            assert np.array_equal(raw, counts)


def test_greedy_with_more_negative_classes_than_k_trims_to_the_most_negative():
    raw, counts = greedy_counts(np.array([-1.0, -3.0, -2.0, 0.5]), 2, impact=-1.0)
    assert raw.tolist() == [1, 1, 1, 0]  # the method's own output: 3 labels for K = 2
    assert counts.tolist() == [0, 1, 1, 0]


def test_ranked_cycle():
    assert ranked_cycle(np.array([2, 0]), 5, 4).tolist() == [2, 0, 3, 0]
    assert ranked_cycle(np.array([3, 1, 0, 2]), 2, 4).tolist() == [0, 1, 0, 1]
    assert ranked_cycle(np.array([1]), 3, 2).tolist() == [0, 3]


def test_heap_tie_order_is_lowest_index():
    # documents why greedy_counts stores (value, index): heap order on ties = argmin's first index
    heap = [(0.0, 2), (0.0, 0), (0.0, 1)]
    heapq.heapify(heap)
    assert heap[0] == (0.0, 0)


@pytest.mark.parametrize("bad", [np.array([-1, 2])])
def test_correct_to_sum_rejects_negative_raw(bad):
    with pytest.raises(ValueError):
        correct_to_sum(bad, bad.astype(float), 1)
