"""Small pictures made big enough to see: the world draws 32 px samples, which a page shows as specks. They are
enlarged by whole factors with nearest-neighbour scaling, as the demo's report does, so each pixel stays a sharp
square and a pattern can be read; the copies are kept in WORKSPACE/.cache/shown/ (the downloads stay the originals)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from .. import atomic

WIDE = 512  # a picture narrower than this is shown at the largest whole multiple of its width that fits it
MAX_FACTOR = 16


def factor(width: int) -> int:
    return max(1, min(MAX_FACTOR, WIDE // max(width, 1)))


def enlarged(path: Path, workspace: Path) -> Path:
    """`path`, or its nearest-neighbour enlargement when it is narrow; made again when the picture changes."""
    try:
        with Image.open(path) as im:
            size = im.size
            times = factor(size[0])
            if times == 1:
                return path
            stamp = path.stat().st_mtime_ns
            key = hashlib.sha256(f"{path.resolve()}:{stamp}".encode()).hexdigest()[:16]
            out = workspace / ".cache" / "shown" / f"{path.stem}-{key}-x{times}.png"
            if not out.is_file():
                atomic.save_image(im.resize((size[0] * times, size[1] * times), Image.Resampling.NEAREST), out)
            return out
    except OSError:
        return path  # a picture being written as it is read: shown as it is, enlarged on the next look
