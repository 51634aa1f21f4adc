"""Pictures of image batches, drawn with matplotlib's object API (no pyplot, no global backend change)."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from matplotlib.figure import Figure
from torch import Tensor

from .data.fileio import atomic_write

__all__ = ["figure", "save_image_rows"]


def figure(rows: int = 1, columns: int = 1, *, figsize: tuple[float, float], **options: Any) -> tuple[Figure, Any]:
    """A new off-screen figure and its subplots (``Figure.subplots``); never touches pyplot's state or backend."""
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
    """Save rows of images as one PNG (e.g. true images above their reconstructions).

    Args:
        rows: each a batch of images in [0, 1], shape (K, C, H, W) with C in {1, 3};
            all rows have the same K. At most ``max_columns`` images per row are drawn.
        path: the PNG file to write.
        row_names: a label at the left of each row.
        captions: per row, one caption per image (e.g. its class).
        title: figure title.

    Returns:
        the path written.
    """
    if not rows:
        raise ValueError("nothing to draw: rows is empty")
    count = min(int(rows[0].shape[0]), max_columns)
    size = (1.1 * count + 0.8, 1.25 * len(rows) + (0.6 if title else 0))
    fig, axes = figure(len(rows), count, figsize=size, squeeze=False)
    for r, batch in enumerate(rows):
        for i in range(count):
            ax = axes[r][i]
            image = batch[i].detach().float().clamp(0, 1).cpu()
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if captions is not None:
                ax.set_title(captions[r][i], fontsize=8)
        if row_names is not None:
            axes[r][0].set_ylabel(row_names[r], fontsize=9)
    if title:
        fig.suptitle(textwrap.fill(title, width=int(14 * count + 10)), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    return path
