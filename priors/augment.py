"""Augmentation consistency: the shared gradient must also be matched by shifted / flipped dummies."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import PriorsInputError
from .registry import register_prior

__all__ = ["AugmentationConsistency", "augment"]


def augment(x: Tensor, shift: tuple[int, int] = (0, 0), flip: bool = False) -> Tensor:
    r"""Translate a batch by whole pixels (zero-padded), then optionally flip it horizontally.

    ``shift = (dx, dy)`` moves the content ``dx`` columns right and ``dy`` rows down (negative: left / up),
    kornia's ``translate`` convention; vacated pixels are 0. The shift is exact (a pad-and-crop, no
    interpolation), so it equals :func:`kornia.geometry.transform.translate` at integer shifts without its
    rounding. ``flip`` then mirrors the columns (:func:`kornia.geometry.transform.hflip`).

    Args:
        x: :math:`(*, H, W)`, typically :math:`(B, C, H, W)`.
        shift: integer ``(dx, dy)`` with :math:`|dx| < W`, :math:`|dy| < H`.
        flip: whether to flip horizontally.

    Returns:
        a tensor of the shape of ``x`` (differentiable w.r.t. ``x``).

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        >>> augment(x, shift=(1, 0)).tolist()  # one column right; the first column is vacated
        [[0.0, 1.0, 2.0], [0.0, 4.0, 5.0]]
        >>> augment(x, shift=(0, -1), flip=True).tolist()  # one row up, then mirrored
        [[6.0, 5.0, 4.0], [0.0, 0.0, 0.0]]
    """
    dx, dy = (int(s) for s in shift)
    height, width = x.shape[-2:]
    if abs(dx) >= width or abs(dy) >= height:
        raise PriorsInputError(f"shift {shift} must be smaller than the image size (H, W) = ({height}, {width})")
    out = F.pad(x, (dx, -dx, dy, -dy)) if dx or dy else x
    return out.flip(-1) if flip else out


class AugmentationConsistency(nn.Module):
    r"""Mean matching loss over randomly augmented copies of the dummy batch.

    .. math:: \mathcal{R}_{\mathrm{aug}}(x) = \frac1n \sum_{k=1}^{n} \mathrm{match}(\mathrm{augment}_k(x))

    Each of the ``copies`` (:math:`n`) draws one translation :math:`(dx, dy)` uniformly from
    :math:`[-m, m]^2` (``m = max_shift``) for the whole batch and, if ``flip``, a horizontal flip with
    probability 1/2 (see :func:`augment`). All randomness comes from the ``generator`` passed to
    :meth:`forward`, never the global RNG, so a seeded run is bit-reproducible and the generator's state
    can be checkpointed.

    Args:
        max_shift: the largest shift in pixels (>= 0).
        flip: whether to draw random horizontal flips.
        copies: augmented copies per call (>= 1).
    """

    def __init__(self, max_shift: int = 2, flip: bool = True, copies: int = 1) -> None:
        super().__init__()
        if max_shift < 0 or copies < 1:
            raise PriorsInputError(f"need max_shift >= 0 and copies >= 1; got max_shift={max_shift}, copies={copies}")
        self.max_shift, self.flip, self.copies = int(max_shift), bool(flip), int(copies)

    def forward(
        self, x: Tensor, match: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``match`` (a batch like ``x`` -> scalar tensor) averaged over the augmented copies of ``x`` (B, C, H, W).

        Raises:
            ValueError: ``match`` or ``generator`` is missing.
        """
        if match is None or generator is None:
            raise PriorsInputError("the 'augment' prior needs match= and generator=")
        device = generator.device
        shifts = torch.randint(
            -self.max_shift, self.max_shift + 1, (self.copies, 2), generator=generator, device=device
        ).tolist()
        flips = (
            (torch.rand(self.copies, generator=generator, device=device) < 0.5).tolist()
            if self.flip
            else [False] * self.copies
        )
        losses = [match(augment(x, (dx, dy), flipped)) for (dx, dy), flipped in zip(shifts, flips)]
        return sum(losses[1:], losses[0]) / self.copies  # copies >= 1: a tensor


register_prior("augment", AugmentationConsistency, batchable=False)
