"""Own images in an ImageFolder layout: ``folder/<class>/**/<image>``, decoded lazily."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from inversion.data.image_source import ImageSource
from inversion.data.specs import DatasetSpec
from inversion.utils.errors import InputError, MissingFileError

__all__ = ["IMAGE_EXTENSIONS", "FolderSource", "list_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_GRAY_MODES = ("L", "1", *_SIXTEEN_BIT_MODES)


def list_image_folder(folder: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """(class names, image paths, targets int64 (N,)) of an ImageFolder layout.

    Classes are the sorted subfolder names (index 0..n-1), at least two (with one class the
    cross-entropy, and so every update, is identically zero); the images of a class are all
    files below its folder (nested ones and symbolic links included) with an extension in
    IMAGE_EXTENSIONS (any case), sorted by path. Each real file counts once: a second path to
    it (a link, a folder reached twice, a link loop) is skipped, and one file in two classes
    is refused. Nothing is decoded."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise InputError(
            f"image folder {root} has no class subfolders; put the images of each "
            f"class in their own subfolder, e.g. {root / 'cat'}/0001.png"
        )
    if len(classes) < 2:
        raise InputError(
            f"image folder {root} has one class ({classes[0]}); a classifier needs at least two "
            "(with one, the cross-entropy and every update are zero): add a class subfolder"
        )
    paths: list[str] = []
    targets: list[int] = []
    owners: dict[tuple[int, int], str] = {}  # (device, inode) of every image file -> its first path
    for index, name in enumerate(classes):
        files = _class_images(root / name, owners)
        if not files:
            raise InputError(
                f"class folder {root / name} holds no images (extensions: "
                f"{' '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        paths += files
        targets += [index] * len(files)
    return classes, paths, np.asarray(targets, dtype=np.int64)


def _class_images(folder: Path, owners: dict[tuple[int, int], str]) -> list[str]:
    """The image paths below ``folder``, sorted, each real file once; follows links to folders, but never
    into a folder already walked (a loop). ``owners`` (file identity -> path) spans all classes: a file
    already listed under another class raises ValueError."""
    visited = {_identity(str(folder))}
    found = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        subfolders.sort()
        for sub in list(subfolders):
            identity = _identity(os.path.join(directory, sub))
            if identity in visited:
                subfolders.remove(sub)
            visited.add(identity)
        found += [os.path.join(directory, file) for file in files if file.lower().endswith(IMAGE_EXTENSIONS)]
    unique = []
    for path in sorted(found):
        identity = _identity(path)
        first = owners.setdefault(identity, path)
        if first == path:
            unique.append(path)
        elif not first.startswith(os.path.join(str(folder), "")):
            raise InputError(
                f"{path} is the same file as {first} of another class; an image belongs to one "
                "class: remove one of them"
            )
    return unique


def _identity(path: str) -> tuple[int, int]:
    """(device, inode) of the file or folder ``path`` names, links followed; a broken link raises ValueError."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror}); fix or remove it") from None
    return info.st_dev, info.st_ino


class FolderSource(ImageSource):
    """An ImageSource over an image folder; only the requested images are decoded.

    ``channels``: 1 (PIL "L") or 3 ("RGB"); default 1 if the first image is grayscale
    (mode L, 1, I, I;16), else 3. 16-bit images are scaled to 8 bits (value / 257).
    ``image_size`` (H, W): every image is resized to it (PIL bilinear); default the
    first image's size, and an image of another size raises ValueError when loaded.
    ``mean``/``std``: one value per channel, default 0.5.
    Extra attributes: ``classes`` (names, index order) and ``paths`` (one per image).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        image_size: Sequence[int] | None = None,
        channels: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        classes, paths, targets = list_image_folder(folder)
        with _open_image(paths[0]) as first:  # reads the header only
            first_mode, (width, height) = first.mode, first.size
        if channels is None:
            channels = 1 if first_mode in _GRAY_MODES else 3
        if channels not in (1, 3):
            raise InputError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        size = _image_size(image_size) if image_size is not None else (height, width)
        mean = _per_channel("mean", mean, channels)
        std = _per_channel("std", std, channels)
        if min(std) <= 0:
            raise InputError(f"std must be positive in every channel, got {std}")
        spec = DatasetSpec("folder", len(classes), channels, size, mean, std)
        resized = f", resized to {size[0]}x{size[1]}" if image_size is not None else ""
        description = (
            f"folder: {len(paths):,} images in {len(classes)} classes from {Path(folder)} "
            f"({channels}x{size[0]}x{size[1]}{resized})"
        )
        super().__init__(spec, targets, description)
        self.classes = classes
        self.paths = paths
        self._resize = image_size is not None
        self._first = (paths[0], width, height)

    def _pixels(self, indices: np.ndarray) -> np.ndarray:
        height, width = self.spec.image_size
        out = np.empty((len(indices), height, width, self.spec.channels), dtype=np.uint8)
        for row, index in enumerate(indices):
            out[row] = self._decode(self.paths[index]).reshape(height, width, self.spec.channels)
        return out

    def _decode(self, path: str) -> np.ndarray:
        """One image as uint8 (H, W) or (H, W, 3) in the source's mode and size."""
        from PIL import Image

        height, width = self.spec.image_size
        with _open_image(path) as image:
            if image.mode in _SIXTEEN_BIT_MODES:
                sixteen = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.clip(np.rint(sixteen / 257), 0, 255).astype(np.uint8), "L")
            image = image.convert("L" if self.spec.channels == 1 else "RGB")
            if self._resize:
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            elif image.size != (width, height):
                first, first_width, first_height = self._first
                raise InputError(
                    f"{path} is {image.width}x{image.height} (WxH) but the first image {first} "
                    f"is {first_width}x{first_height}; pass image_size=(H, W) to resize all images"
                )
            return np.asarray(image, dtype=np.uint8)


@contextmanager
def _open_image(path: str) -> Iterator:
    """Yields ``PIL.Image.open(path)``; a file PIL cannot read (in the block too, where it decodes)
    raises ValueError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise InputError(
            f"{path}: not a readable image ({type(error).__name__}: {error}); replace or remove the file"
        ) from error


def _image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """Validated (H, W)."""
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise InputError(f"image_size must be (H, W) with two positive ints, got {image_size!r}")
    return int(size[0]), int(size[1])


def _per_channel(name: str, values: Sequence[float] | None, channels: int) -> tuple[float, ...]:
    """``values`` as a tuple with one float per channel (default 0.5 each)."""
    if values is None:
        return (0.5,) * channels
    result = tuple(float(v) for v in values)
    if len(result) != channels:
        raise InputError(f"{name} needs {channels} value(s), one per channel, got {values!r}")
    return result
