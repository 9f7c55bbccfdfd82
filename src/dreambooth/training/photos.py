"""Image folder -> validated RGB images (EXIF, any Pillow mode, optional captions) -> training tensors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from ..errors import UsageError, warn

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


MASK_SUFFIX = ".mask.png"  # name.mask.png beside name.jpg: white where the subject is


@dataclass
class Photo:
    path: Path
    image: Image.Image  # RGB, upright
    caption: str | None  # from a .txt beside the image, if any
    mask: Image.Image | None = None  # "L", the image's size, 255 = subject (--masked-loss); None = all subject


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is laid on white, as a photo of the object would be."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        top = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


MAX_PIXELS = 64_000_000  # a 64-megapixel photo decodes to ~200 MB; a header claiming more is refused unread


class TooLarge(ValueError):
    pass


def open_photo(path: Path) -> Image.Image:
    """Decode fully (so truncated files fail here, not mid-training), upright, RGB."""
    return to_rgb(open_upright(path))


def open_upright(path: Path) -> Image.Image:
    """Decode fully, upright, in the file's own mode (its alpha channel kept)."""
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError:  # Pillow refuses headers past twice its own limit
        raise TooLarge(
            f"its header claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0) // 1_000_000} megapixels, which"
        ) from None
    with opened as im:
        if im.size[0] * im.size[1] > MAX_PIXELS:
            raise TooLarge(f"{im.size[0]}x{im.size[1]} px")
        im.load()
        return ImageOps.exif_transpose(im)


def alpha_of(image: Image.Image) -> Image.Image | None:
    """The image's transparency as an "L" image (255 = opaque), or None when it has none."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return image.getchannel("A")
    return None


def is_mask(path: Path) -> bool:
    return path.name.lower().endswith(MASK_SUFFIX)


def read_mask(path: Path, opened: Image.Image) -> Image.Image | None:
    """The mask of the photo at `path` (`opened`, upright, in its own mode): its name.mask.png, else its alpha
    channel, else None. A mask that cannot be read or does not fit its photo is an error naming it."""
    mask_path = path.with_name(path.stem + MASK_SUFFIX)
    if not mask_path.is_file():
        return alpha_of(opened)
    try:
        mask = to_grey(open_upright(mask_path))
    except (OSError, ValueError, SyntaxError, TooLarge) as e:
        raise UsageError(
            f"mask {mask_path}: not a readable image ({type(e).__name__}); save it as a PNG, white = subject"
        ) from None
    if mask.size != opened.size:
        raise UsageError(
            f"mask {mask_path}: {mask.size[0]}x{mask.size[1]} px but its photo is {opened.size[0]}x{opened.size[1]}; "
            f"draw the mask at the photo's size"
        )
    return mask


def to_grey(image: Image.Image) -> Image.Image:
    """A mask in any mode -> 8-bit "L"; a transparent mask reads as its alpha (transparent = background)."""
    alpha = alpha_of(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = to_rgb(image)
    grey = image.convert("RGB").convert("L")
    return grey if alpha is None else Image.fromarray(np.minimum(np.asarray(grey), np.asarray(alpha)))


def check_folder(folder: str | Path, flag: str = "--instance-dir") -> Path:
    """The photo folder, refused in one line when it is missing or a file (before a command loads torch)."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise UsageError(f"{flag} {folder}: no such folder; pass the folder that holds the photos")
    if not root.is_dir():
        raise UsageError(f"{flag} {folder}: is a file, not a folder; pass the folder that holds the photos")
    return root


def load_folder(folder: str | Path, flag: str = "--instance-dir", masks: bool = False) -> list[Photo]:
    """Every readable image in `folder`, sorted by name; unreadable files are skipped with a warning. Masks
    (name.mask.png) are never photos; with `masks` each photo's mask is read (`read_mask`), and the photos without
    one are named in a warning."""
    root = check_folder(folder, flag)
    try:
        entries = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not is_mask(p))
    except OSError as e:
        raise UsageError(f"{flag} {folder}: cannot list it ({e.strerror}); check its permissions") from None
    photos = []
    for path in entries:
        if not path.is_file():  # a folder named x.jpg, a broken link or a link loop
            warn(f"skipping {path}: not a regular file")
            continue
        try:
            opened = open_upright(path)
            image = to_rgb(opened)
        except TooLarge as e:
            warn(f"skipping {path}: {e} is larger than {MAX_PIXELS // 1_000_000} megapixels; downsize it")
            continue
        except (OSError, ValueError, SyntaxError) as e:
            warn(f"skipping {path}: not a readable image ({type(e).__name__})")
            continue
        if min(image.size) < 8:
            warn(f"skipping {path}: {image.size[0]}x{image.size[1]} px is too small to train on")
            continue
        caption_file = path.with_suffix(".txt")
        try:
            caption = caption_file.read_text(encoding="utf-8", errors="replace").strip() if caption_file.is_file() else None
        except OSError as e:
            warn(f"ignoring caption {caption_file}: {e.strerror}")
            caption = None
        photos.append(Photo(path, image, caption or None, read_mask(path, opened) if masks else None))
    if not photos:
        raise UsageError(f"{flag} {folder}: no usable image in it (.jpg, .png, .webp, ...); add the subject's photos")
    unmasked = [p.path.name for p in photos if masks and p.mask is None]
    if unmasked:
        warn(
            f"--masked-loss: no mask for {', '.join(unmasked)} in {folder} (no name{MASK_SUFFIX} beside it, no alpha "
            f"channel); {'it counts' if len(unmasked) == 1 else 'they count'} as all subject"
        )
    return photos


Size = tuple[int, int]  # (width, height) in pixels


def as_size(target: int | Size) -> Size:
    return (target, target) if isinstance(target, int) else target


def resized(size: Size, target: int | Size) -> Size:
    """(width, height) scaled to just cover `target` (a square side, or (width, height)): for a square, the shorter
    side at its side."""
    w, h = size
    tw, th = as_size(target)
    scale = max(tw / w, th / h)
    return max(tw, round(w * scale)), max(th, round(h * scale))


def resize_and_crop(
    image: Image.Image, target: int | Size, center_crop: bool, generator: torch.Generator | None = None, flip: bool = False
) -> tuple[Image.Image, tuple[int, int]]:
    """Scaled to cover `target` (a square side, or a bucket's (width, height)), optionally mirrored, then cropped to it:
    centred, or at a seeded random place.

    Returns the crop and its (top, left) corner in the resized (mirrored) image, which some families are conditioned on."""
    tw, th = as_size(target)
    new_w, new_h = resized(image.size, target)
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if center_crop:
        left, top = (new_w - tw) // 2, (new_h - th) // 2
    else:
        import torch  # here, so that a command can check its photo folder before torch loads

        left = int(torch.randint(0, new_w - tw + 1, (1,), generator=generator))
        top = int(torch.randint(0, new_h - th + 1, (1,), generator=generator))
    return image.crop((left, top, left + tw, top + th)), (top, left)


def crop_like(mask: Image.Image, target: int | Size, flip: bool, corner: tuple[int, int]) -> Image.Image:
    """`mask` resized, mirrored and cropped exactly as `resize_and_crop` did its photo, given that crop's corner."""
    tw, th = as_size(target)
    mask = mask.resize(resized(mask.size, target), Image.Resampling.BILINEAR)
    if flip:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    top, left = corner
    return mask.crop((left, top, left + tw, top + th))


# ---------------------------------------------------------------- aspect-ratio buckets

MAX_ASPECT = 4.0  # no bucket longer than 4:1; a longer photo is cropped to the longest


def bucket_step(resolution: int, multiple: int) -> int:
    """Bucket sides are multiples of 64 px, or at small training sizes (the embedded 32-64 px models) of a quarter of
    the side; always of the family's `multiple` (FLUX.1 and SD3: 16, for their 2x2 latent patches)."""
    step = min(64, resolution // 4)
    return max(multiple, step // multiple * multiple)


def buckets(resolution: int, multiple: int = 8) -> list[Size]:
    """(width, height) of every bucket: each width a multiple of the step, with the tallest height that keeps the
    area within `resolution` squared, up to 4:1 either way; the square itself among them."""
    step, area = bucket_step(resolution, multiple), resolution * resolution
    out = set()
    for w in range(step, 4 * resolution + 1, step):
        h = area // w // step * step
        if h >= step and max(w, h) / min(w, h) <= MAX_ASPECT:
            out |= {(w, h), (h, w)}
    return sorted(out)


def bucket_of(size: Size, choices: list[Size]) -> Size:
    """The bucket whose aspect is nearest the photo's (in log scale, so 2:1 and 1:2 are as far from 1:1); of equal
    ones the larger."""
    import math

    w, h = size
    return min(choices, key=lambda b: (abs(math.log((b[0] / b[1]) / (w / h))), -b[0] * b[1]))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> CHW float tensor in [-1, 1], the VAE's input range."""
    import torch

    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def slug(text: str, limit: int = 48, empty: str = "prompt") -> str:
    """A prompt as a folder-name part: lower-case letters and digits joined by '-', at most `limit` characters."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or empty
