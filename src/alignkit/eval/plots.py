"""PNG plots with matplotlib's headless backend, at a fixed size (inches × DPI), written atomically.

Every plot of an evaluation or report is made by a function that takes plain numbers and a path and returns
the path; `png_size` reads a PNG's width and height from its header (what the tests and reports check).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DPI = 100
SIZE = (6.4, 4.0)  # inches: 640 × 400 pixels at DPI


@contextmanager
def figure(size: tuple[float, float] = SIZE, path: str | os.PathLike | None = None) -> Iterator[Any]:
    """A matplotlib (figure, axes) on the Agg backend, saved to `path` as PNG on exit (through a temporary
    file, so a half-written plot never takes the name) and closed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot

    fig, axes = pyplot.subplots(figsize=size, dpi=DPI)
    try:
        yield fig, axes
        if path is not None:
            save_png(fig, path)
    finally:
        pyplot.close(fig)


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Save `fig` at `DPI` to `path` (parent folders created), atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    fig.savefig(temporary, format="png", dpi=DPI)
    os.replace(temporary, target)
    return target


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) in pixels of a PNG file, read from its IHDR chunk; ValueError if it is not a PNG."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def pixels(size: tuple[float, float] = SIZE) -> tuple[int, int]:
    """The pixel size of a plot made at `size` inches."""
    return round(size[0] * DPI), round(size[1] * DPI)
