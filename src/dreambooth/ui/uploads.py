"""Photos sent to the page -> validated copies under generated names in the workspace.

Nothing the browser sends is trusted: a file's name is only shown back to the user, never used to
build a path; its content must decode as an image (as `dreambooth train` will read it), and size and
count are capped so one upload cannot fill the disk or memory.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..training.photos import IMAGE_SUFFIXES, MASK_SUFFIX, TooLarge, is_mask, open_photo, open_upright

MAX_PHOTOS = 10  # the paper uses 3-5 photos; more than 10 adds little and makes the upload a disk-filling vector
MIN_PHOTOS = 3
MAX_BYTES = 20 * 1024 * 1024  # a 20 MB JPEG is already a 50+ megapixel photo
# Pillow's format name -> the suffix the stored copy gets, so the name matches what the bytes are.
SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "MPO": ".jpg"}


class Rejected(ValueError):
    """A file that is not used; the message says why, for the page."""


def shown_name(name: str) -> str:
    """The file's own name, for messages only: no folders, no control characters, not too long."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = "".join(ch for ch in base if ch.isprintable())
    return (base[:77] + "...") if len(base) > 80 else (base or "(no name)")


def check_photo(path: Path) -> str:
    """The suffix for the photo's real format, or Rejected with the reason."""
    try:
        size = path.stat().st_size
    except OSError:
        raise Rejected("could not be read") from None
    if size > MAX_BYTES:
        raise Rejected(f"is {size / 1e6:.0f} MB, over the {MAX_BYTES // (1024 * 1024)} MB limit; downsize it")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise Rejected(f"is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        image = open_photo(path)  # a full decode, as training does, so a truncated file fails here
    except TooLarge as e:
        raise Rejected(f"{e} is too large; downsize it") from None
    except (OSError, ValueError, SyntaxError):
        raise Rejected("is not a readable image") from None
    if min(image.size) < 8:
        raise Rejected(f"{image.size[0]}x{image.size[1]} px is too small to train on")
    from PIL import Image

    with Image.open(path) as im:
        return SUFFIX_OF_FORMAT.get(im.format or "", ".png")


def mask_of(name: str) -> str:
    """The photo name a mask's name belongs to, by stem ('dog-0.mask.png' -> 'dog-0'); '' for a photo."""
    base = shown_name(name)
    return base[: -len(MASK_SUFFIX)] if is_mask(Path(base)) else ""


def store_photos(sources: list[tuple[str, Path]], dest: Path) -> tuple[list[Path], list[str]]:
    """Copy the usable photos of `sources` ((name shown to the user, file)) to dest/photo-NN.<ext>, and each photo's
    mask among them (name.mask.png beside name.jpg, for --masked-loss) to dest/photo-NN.mask.png.

    Returns the stored photos and one message per file left out, naming it. A photo's copy keeps the original bytes
    (its EXIF orientation, which training applies, and its alpha channel, which is a mask too)."""
    stored: list[Path] = []
    problems: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    masks = {mask_of(name): (name, Path(path)) for name, path in sources if mask_of(name)}
    for name, path in sources:
        shown = shown_name(name)
        if mask_of(name):
            continue
        if len(stored) >= MAX_PHOTOS:
            problems.append(f"{shown} left out: at most {MAX_PHOTOS} photos are used")
            continue
        try:
            suffix = check_photo(Path(path))
        except Rejected as e:
            problems.append(f"{shown} {e}; skipped")
            continue
        target = dest / f"photo-{len(stored) + 1:02d}{suffix}"
        shutil.copyfile(path, target)
        stored.append(target)
        mask = masks.pop(Path(shown).stem, None)
        if mask is not None:
            problems += store_mask(mask, target)
    problems += [f"{shown_name(name)}: no photo {mask_of(name)}.* beside it; skipped" for name, _ in masks.values()]
    return stored, problems


def store_mask(mask: tuple[str, Path], photo: Path) -> list[str]:
    """The mask, re-encoded as the PNG its name promises, beside its stored photo; a problem when it is not usable."""
    from .. import atomic

    name, path = mask
    try:
        check_photo(path)
        im, shot = open_upright(path), open_upright(photo)  # upright, as training reads both
    except Rejected as e:
        return [f"{shown_name(name)} {e}; skipped"]
    if im.size != shot.size:
        return [f"{shown_name(name)} is {im.size[0]}x{im.size[1]} px, its photo {shot.size[0]}x{shot.size[1]}; skipped"]
    atomic.save_image(im, photo.with_name(photo.stem + MASK_SUFFIX))
    return []


def inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def folder_sources(folder: str, roots: Sequence[Path]) -> tuple[list[tuple[str, Path]], list[str]]:
    """The image files of a folder on the server, as store_photos' sources; problems if it is not one.

    Only folders in `roots` (the workspace first, then the --photo-root folders) are read: a relative name is taken
    in the workspace, and links are followed before the check, so neither `../` nor a link leads out of them. A
    folder outside gets the same answer whether it exists or not."""
    roots = [Path(r).resolve() for r in roots]
    named = Path(folder.strip()).expanduser()
    root = (roots[0] / named if roots and not named.is_absolute() else named).resolve()
    if not inside(root, roots):
        return [], [f"{folder}: outside the folders this page reads (the workspace and --photo-root folders); "
                    "copy the photos there, or start the page with --photo-root FOLDER"]  # fmt: skip
    if not root.is_dir():
        return [], [f"{folder}: no such folder on this machine"]
    try:
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as e:
        return [], [f"{folder}: cannot list it ({e.strerror})"]
    # A file is copied from where its links lead, checked to be inside as well.
    found = [(p.name, p.resolve()) for p in files]
    problems = [f"{shown_name(n)} leads outside the folders this page reads; skipped" for n, p in found if not inside(p, roots)]
    return [(n, p) for n, p in found if inside(p, roots)], problems
