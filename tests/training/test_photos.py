import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.errors import UsageError
from dreambooth.training.photos import crop_like, load_folder, resize_and_crop, to_rgb, to_tensor


def test_every_mode_becomes_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white background
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (4, 4), 100)).getpixel((0, 0)) == (100, 100, 100)
    cmyk = to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0)))  # CMYK red
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 200
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4))
    assert to_rgb(palette).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), "blue")
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    im.save(tmp_path / "rotated.jpg", exif=exif)
    (photo,) = load_folder(tmp_path)
    assert photo.image.size == (20, 40)


def test_captions_beside_images_and_unreadable_files_skipped(tmp_path, capsys):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a photo of sks dog on a sofa\n")
    Image.new("RGB", (32, 32), "green").save(tmp_path / "b.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    Image.new("RGB", (64, 64)).save(tmp_path / "c.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "c.png").read_bytes()[:60])
    (tmp_path / "notes.md").write_text("ignored: not an image suffix")
    photos = load_folder(tmp_path)
    assert [p.path.name for p in photos] == ["a.png", "b.png", "c.png"]
    assert photos[0].caption == "a photo of sks dog on a sofa" and photos[1].caption is None
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "truncated.png" in err


def test_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="--instance-dir .*no such folder"):
        load_folder(tmp_path / "missing")
    with pytest.raises(UsageError, match="no usable image"):
        load_folder(tmp_path)
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(UsageError, match="no usable image"):
        load_folder(tmp_path)


def test_resize_and_crop():
    wide = Image.new("RGB", (200, 100))
    wide.paste((255, 0, 0), (0, 0, 50, 100))  # red left quarter
    centre, corner = resize_and_crop(wide, 64, center_crop=True)
    assert centre.size == (64, 64) and centre.getpixel((0, 32))[0] < 50  # the red band was cropped away
    assert corner == (0, 32)  # 128x64 after resizing: (top, left) of the middle 64x64
    a, at = resize_and_crop(wide, 64, False, torch.Generator().manual_seed(3))
    b, bt = resize_and_crop(wide, 64, False, torch.Generator().manual_seed(3))
    assert a.size == (64, 64) and a.tobytes() == b.tobytes() and at == bt
    assert a.tobytes() == wide.resize((128, 64), Image.BICUBIC).crop((at[1], at[0], at[1] + 64, at[0] + 64)).tobytes()


def test_to_tensor_range():
    im = Image.new("RGB", (2, 1))
    im.putpixel((0, 0), (255, 255, 255))
    t = to_tensor(im)
    assert t.shape == (3, 1, 2) and t[0, 0, 0] == 1.0 and t[0, 0, 1] == -1.0


def test_flip_mirrors_before_cropping():
    wide = Image.new("RGB", (200, 100))
    wide.paste((255, 0, 0), (0, 0, 50, 100))
    flipped, corner = resize_and_crop(wide, 64, False, torch.Generator().manual_seed(0), flip=True)
    mirrored = wide.resize((128, 64), Image.BICUBIC).transpose(Image.FLIP_LEFT_RIGHT)
    assert flipped.tobytes() == mirrored.crop((corner[1], corner[0], corner[1] + 64, corner[0] + 64)).tobytes()


def test_webp_16bit_grey_cmyk_files_and_unicode_paths(tmp_path):
    folder = tmp_path / "fotos del perro ünï"
    folder.mkdir()
    Image.new("RGB", (40, 30), "orange").save(folder / "a photo.webp")
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(folder / "deep 16.png")
    Image.new("CMYK", (40, 30), (0, 0, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("LA", (40, 30), (10, 128)).save(folder / "grey alpha.png")
    photos = load_folder(folder)
    assert len(photos) == 4 and all(p.image.mode == "RGB" and p.image.size == (40, 30) for p in photos)


def png_header_claiming(width, height) -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_gigapixel_headers_symlink_loops_and_tiny_images_are_skipped(tmp_path, capsys):
    import os

    Image.new("RGB", (32, 32), "red").save(tmp_path / "good.png")
    (tmp_path / "huge.png").write_bytes(png_header_claiming(100_000, 100_000))
    (tmp_path / "big.png").write_bytes(png_header_claiming(10_000, 8_000))  # 80 MP: past our limit, under Pillow's
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    (tmp_path / "folder.jpg").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "speck.png")
    (tmp_path / "liar.png").write_bytes((tmp_path / "good.png").read_bytes())  # right bytes, name says nothing
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "really_jpeg.png", format="JPEG")  # lies about its type
    photos = load_folder(tmp_path)
    assert [p.path.name for p in photos] == ["good.png", "liar.png", "really_jpeg.png"]
    err = capsys.readouterr().err
    assert "huge.png: its header claims more than 178 megapixels, which is larger than 64 megapixels" in err
    assert "big.png: 10000x8000 px is larger than 64 megapixels" in err
    assert "loop.jpg: not a regular file" in err and "folder.jpg: not a regular file" in err
    assert "speck.png" in err and "too small" in err


def test_unlistable_folder_is_one_clear_error(tmp_path, monkeypatch):
    from pathlib import Path

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(UsageError, match="cannot list it \\(Permission denied\\)"):
        load_folder(tmp_path)


def test_masks_beside_photos_or_in_their_alpha_are_read_and_photos_without_one_warn(tmp_path, capsys):
    Image.new("RGB", (40, 32), "red").save(tmp_path / "a.jpg")
    drawn = Image.new("L", (40, 32), 0)
    drawn.paste(255, (10, 4, 30, 28))
    drawn.save(tmp_path / "a.mask.png")
    cutout = Image.new("RGBA", (40, 32), (0, 0, 255, 0))
    cutout.paste((0, 0, 255, 255), (0, 0, 20, 32))
    cutout.save(tmp_path / "b.png")
    Image.new("RGB", (40, 32), "green").save(tmp_path / "c.png")

    plain = load_folder(tmp_path)
    assert [p.path.name for p in plain] == ["a.jpg", "b.png", "c.png"]  # a mask is never a photo
    assert all(p.mask is None for p in plain) and "warning" not in capsys.readouterr().err

    a, b, c = load_folder(tmp_path, masks=True)
    assert a.mask.tobytes() == drawn.tobytes()
    assert b.mask.getpixel((5, 5)) == 255 and b.mask.getpixel((35, 5)) == 0  # the cut-out's alpha
    assert b.image.getpixel((35, 5)) == (255, 255, 255)  # the photo itself is still laid on white
    assert c.mask is None
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert "c.png" in warning and "a.jpg" not in warning and "b.png" not in warning and "all subject" in warning


def test_a_bad_mask_is_one_error_naming_it(tmp_path):
    Image.new("RGB", (40, 32), "red").save(tmp_path / "a.jpg")
    (tmp_path / "a.mask.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match=r"a\.mask\.png: not a readable image"):
        load_folder(tmp_path, masks=True)
    Image.new("L", (32, 32), 255).save(tmp_path / "a.mask.png")
    with pytest.raises(UsageError, match=r"a\.mask\.png: 32x32 px but its photo is 40x32"):
        load_folder(tmp_path, masks=True)


def test_a_mask_follows_its_photo_through_resize_crop_and_flip():
    # a red subject off-centre in a wide photo, and its exact mask
    photo, mask = Image.new("RGB", (256, 128), "white"), Image.new("L", (256, 128), 0)
    photo.paste((255, 0, 0), (24, 40, 96, 120))
    mask.paste(255, (24, 40, 96, 120))
    seen = set()
    for seed in range(12):
        flip = seed % 2 == 1
        crop, corner = resize_and_crop(photo, 64, False, torch.Generator().manual_seed(seed), flip)
        cropped_mask = crop_like(mask, 64, flip, corner)
        subject = np.asarray(crop)[..., 1] < 128  # red: little green
        assert cropped_mask.size == (64, 64)
        assert np.array_equal(np.asarray(cropped_mask) >= 128, subject), (seed, corner)
        seen.add((flip, corner))
    assert len(seen) > 6 and {f for f, _ in seen} == {False, True}
