"""Pictures of image batches, drawn with matplotlib's object API (no pyplot, no global backend change)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from inversion.utils.errors import InputError
from inversion.utils.fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["figure", "save_image_rows"]


def figure(rows: int = 1, columns: int = 1, *, figsize: tuple[float, float], **options: Any) -> tuple[Figure, Any]:
    """A new off-screen figure and its subplots (``Figure.subplots``); never touches pyplot's state or backend."""
    from matplotlib.figure import Figure  # here, not at import time: it takes half a second to load

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, columns, **options)


def save_image_rows(
    rows: Sequence[Tensor],
    path: str | Path,
    *,
    row_names: Sequence[str] | None = None,
    captions: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
    max_columns: int = 16,
) -> Path:
    """Save rows of images as one PNG (e.g. true images above their reconstructions), every image drawn.

    A batch wider than ``max_columns`` wraps: images ``0 .. max_columns-1`` of every row form the first
    block, the next ``max_columns`` the second, and so on (so a true image stays above its reconstruction);
    each row name says which images its line holds.

    Args:
        rows: each a batch of images in [0, 1], shape (K, C, H, W) with C in {1, 3}; all rows have the same K.
        path: the PNG file to write.
        row_names: a label at the left of each row.
        captions: per row, one caption per image (e.g. its class).
        title: figure title.
        max_columns: images per line (>= 1).

    Returns:
        the path written.
    """
    if not rows:
        raise InputError("nothing to draw: rows is empty")
    if max_columns < 1:
        raise InputError(f"max_columns must be >= 1, got {max_columns}")
    total = int(rows[0].shape[0])
    if any(int(batch.shape[0]) != total for batch in rows):
        raise InputError(f"every row needs the same number of images; got {[int(b.shape[0]) for b in rows]}")
    count = min(total, max_columns)
    blocks = -(-total // count)
    lines = len(rows) * blocks
    size = (1.1 * count + 0.8, 1.25 * lines + (0.6 if title else 0))
    fig, axes = figure(lines, count, figsize=size, squeeze=False)
    for block in range(blocks):
        first = block * count
        for r, batch in enumerate(rows):
            line = axes[block * len(rows) + r]
            for column in range(count):
                ax, i = line[column], first + column
                ax.set_xticks([])
                ax.set_yticks([])
                if i >= total:
                    ax.axis("off")
                    continue
                image = batch[i].detach().float().clamp(0, 1).cpu()
                if image.shape[0] == 1:
                    ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(image.permute(1, 2, 0).numpy())
                if captions is not None:
                    ax.set_title(captions[r][i], fontsize=8)
            if row_names is not None:
                span = "" if blocks == 1 else f" {first + 1}-{min(first + count, total)}"
                line[0].set_ylabel(row_names[r] + span, fontsize=9)
    if title:
        fig.suptitle(textwrap.fill(title, width=int(14 * count + 10)), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    return path
