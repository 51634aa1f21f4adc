"""Client batch samplers matching the label distributions of the iLRG paper's setups.

A sampler decides how many images of each class the client's batch holds, then
draws those images from a source without replacement (unless asked otherwise):

==========  ==================================================================
``random``  K distinct images drawn uniformly from the whole source
``unique``  K distinct classes, one image each (needs K <= number of classes)
``balanced``  K split over ``classes`` = n random classes, counts differing by
            at most one (exactly K / n each when n divides K)
``extreme`` all K images of one class (``target_class``, or a random one)
``counts``  explicit per-class counts, e.g. ``{0: 1, 18: 22, 92: 1}``
==========  ==================================================================

Classes are drawn among those the source holds enough images of, so a small
source (e.g. 20 CIFAR-100 images) still yields valid batches where it can, and a
request it cannot meet is a clear error rather than a silent duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from inversion.utils.errors import InputError

__all__ = ["SAMPLER_NAMES", "sample_indices", "synthetic_counts"]

SAMPLER_NAMES = ("random", "unique", "balanced", "extreme", "counts")


def _check_common(sampler: str, num_classes: int, batch_size: int) -> None:
    if sampler not in SAMPLER_NAMES:
        raise InputError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLER_NAMES)}")
    if int(batch_size) < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if int(num_classes) < 1:
        raise InputError(f"number of classes must be >= 1, got {num_classes}")


def _explicit_counts(counts: Mapping[int, int] | None, num_classes: int, batch_size: int) -> np.ndarray:
    """Per-class counts (C,) from a ``{class: count}`` mapping, validated against C and K."""
    if not counts:
        raise InputError("sampler 'counts' needs explicit per-class counts, e.g. client.counts={0: 1, 18: 6, 92: 1}")
    out = np.zeros(num_classes, dtype=np.int64)
    for label, count in counts.items():
        label, count = int(label), int(count)
        if not 0 <= label < num_classes:
            raise InputError(f"counts name class {label}, outside 0..{num_classes - 1}")
        if count < 0:
            raise InputError(f"count for class {label} is negative ({count})")
        out[label] = count
    if out.sum() != batch_size:
        raise InputError(f"counts sum to {int(out.sum())} but the batch size is {batch_size}; make them agree")
    return out


def _balanced_split(batch_size: int, classes: int | None, num_classes: int) -> np.ndarray:
    """Counts (n,) for K split over n classes as evenly as possible (largest first)."""
    if classes is None:
        raise InputError("sampler 'balanced' needs the number of classes to split the batch over (client.classes)")
    if not 1 <= classes <= min(batch_size, num_classes):
        raise InputError(f"balanced sampler: classes must be in 1..min(K={batch_size}, C={num_classes}), got {classes}")
    base, extra = divmod(batch_size, classes)
    return np.array([base + 1] * extra + [base] * (classes - extra), dtype=np.int64)


def _pick_classes(rng: np.random.Generator, eligible: np.ndarray, needed: int, what: str) -> np.ndarray:
    if eligible.size < needed:
        raise InputError(
            f"{what}: the source has only {eligible.size} classes with enough images, {needed} needed; "
            "use a larger source, a smaller batch, or client.replacement=true (recorded in results)"
        )
    return rng.choice(eligible, size=needed, replace=False)


def _class_counts_for_source(
    sampler: str,
    per_class: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    *,
    counts: Mapping[int, int] | None,
    classes: int | None,
    target_class: int | None,
    replacement: bool,
) -> np.ndarray:
    """Per-class counts (C,) for the class-structured samplers, given images per class (C,)."""
    num_classes = per_class.size
    out = np.zeros(num_classes, dtype=np.int64)
    if sampler == "counts":
        return _explicit_counts(counts, num_classes, batch_size)
    if sampler == "unique":
        if batch_size > num_classes:
            raise InputError(f"sampler 'unique' needs K <= number of classes ({num_classes}), got K={batch_size}")
        eligible = np.flatnonzero(per_class >= 1)
        out[_pick_classes(rng, eligible, batch_size, "unique sampler")] = 1
        return out
    if sampler == "balanced":
        split = _balanced_split(batch_size, classes, num_classes)
        need = 1 if replacement else int(split[0])
        eligible = np.flatnonzero(per_class >= need)
        out[_pick_classes(rng, eligible, split.size, "balanced sampler")] = split
        return out
    # extreme
    if target_class is not None:
        if not 0 <= int(target_class) < num_classes:
            raise InputError(f"target_class {target_class} is outside 0..{num_classes - 1}")
        out[int(target_class)] = batch_size
        return out
    need = 1 if replacement else batch_size
    out[_pick_classes(rng, np.flatnonzero(per_class >= need), 1, "extreme sampler")] = batch_size
    return out


def sample_indices(
    targets: np.ndarray,
    num_classes: int,
    batch_size: int,
    sampler: str = "random",
    *,
    rng: np.random.Generator,
    counts: Mapping[int, int] | None = None,
    classes: int | None = None,
    target_class: int | None = None,
    replacement: bool = False,
) -> np.ndarray:
    """Draw the indices of a client batch from a labelled source.

    Args:
        targets: class index of every image of the source, shape (N,).
        num_classes: number of classes C (targets lie in 0..C-1).
        batch_size: K, the number of images in the batch.
        sampler: one of :data:`SAMPLER_NAMES`.
        rng: the random generator (seeded by the caller).
        counts: ``{class: count}`` for the ``counts`` sampler (summing to K).
        classes: n, the number of classes for the ``balanced`` sampler.
        target_class: the class of the ``extreme`` sampler (random if None).
        replacement: allow an image to appear more than once (off by default;
            duplicates make label restoration artificially easy, so callers must
            record it).

    Returns:
        indices into the source, shape (K,), int64, in random order.

    Raises:
        ValueError: unknown sampler, bad options, or a request the source
            cannot meet without replacement.
    """
    _check_common(sampler, num_classes, batch_size)
    targets = np.asarray(targets, dtype=np.int64)
    if targets.ndim != 1 or targets.size == 0:
        raise InputError("targets must be a non-empty 1-D array of class indices")
    if targets.min() < 0 or targets.max() >= num_classes:
        raise InputError(f"targets must lie in 0..{num_classes - 1}")
    if sampler == "random":
        if batch_size > targets.size and not replacement:
            raise InputError(
                f"asked for {batch_size} distinct images but the source has {targets.size}; "
                "use a larger source or client.replacement=true (recorded in results)"
            )
        return rng.choice(targets.size, size=batch_size, replace=replacement).astype(np.int64)

    per_class = np.bincount(targets, minlength=num_classes)
    wanted = _class_counts_for_source(
        sampler,
        per_class,
        batch_size,
        rng,
        counts=counts,
        classes=classes,
        target_class=target_class,
        replacement=replacement,
    )
    short = np.flatnonzero((wanted > per_class) if not replacement else (wanted > 0) & (per_class == 0))
    if short.size:
        c = int(short[0])
        raise InputError(
            f"asked for {int(wanted[c])} images of class {c} but the source has only {int(per_class[c])}; "
            + (
                ""
                if replacement
                else "set client.replacement=true to sample with replacement (recorded in results) or "
            )
            + "use a larger source"
        )
    order = np.argsort(targets, kind="stable")
    starts = np.concatenate(([0], np.cumsum(per_class)[:-1]))
    picked = [
        order[starts[c] + rng.choice(per_class[c], size=wanted[c], replace=replacement)] for c in np.flatnonzero(wanted)
    ]
    return rng.permutation(np.concatenate(picked)).astype(np.int64)


def synthetic_counts(
    num_classes: int,
    batch_size: int,
    sampler: str = "random",
    *,
    rng: np.random.Generator,
    counts: Mapping[int, int] | None = None,
    classes: int | None = None,
    target_class: int | None = None,
) -> np.ndarray:
    """Per-class label counts (C,) drawn by a sampler, independent of any image source.

    Used for untrained models, whose gradients do not depend on whether an image
    matches its label: ``random`` draws each of the K labels uniformly from the C
    classes; the other samplers behave as in :func:`sample_indices` with every
    class available.

    Returns:
        counts, shape (C,), int64, summing to K.
    """
    _check_common(sampler, num_classes, batch_size)
    if sampler == "random":
        return np.bincount(rng.integers(0, num_classes, size=batch_size), minlength=num_classes).astype(np.int64)
    unlimited = np.full(num_classes, batch_size, dtype=np.int64)
    return _class_counts_for_source(
        sampler,
        unlimited,
        batch_size,
        rng,
        counts=counts,
        classes=classes,
        target_class=target_class,
        replacement=False,
    )
