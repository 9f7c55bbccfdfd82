import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.data import load_folder, resize_and_crop, to_rgb, to_tensor
from dreambooth.errors import UsageError


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
    centre = resize_and_crop(wide, 64, center_crop=True)
    assert centre.size == (64, 64) and centre.getpixel((0, 32))[0] < 50  # the red band was cropped away
    a = resize_and_crop(wide, 64, False, torch.Generator().manual_seed(3))
    b = resize_and_crop(wide, 64, False, torch.Generator().manual_seed(3))
    assert a.size == (64, 64) and a.tobytes() == b.tobytes()


def test_to_tensor_range_and_flip():
    im = Image.new("RGB", (2, 1))
    im.putpixel((0, 0), (255, 255, 255))
    t = to_tensor(im)
    assert t.shape == (3, 1, 2) and t[0, 0, 0] == 1.0 and t[0, 0, 1] == -1.0
    assert torch.equal(to_tensor(im, flip=True), t.flip(-1))
