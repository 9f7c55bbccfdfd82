import numpy as np
from PIL import Image

from dreambooth.families.sd import build_tiny as build_tiny_pipeline
from dreambooth.training.class_images import consecutive_runs, ensure_class_images


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_interrupted_generation_resumes_with_the_same_images(tmp_path):
    pipe = build_tiny_pipeline()
    args = dict(class_prompt="a photo of a dog", resolution=64, seed=11, steps=3, batch_size=1)
    ensure_class_images(pipe, class_dir=tmp_path / "split", num=2, **args)  # "interrupted" after two
    (tmp_path / "split" / ".class-00002.png.x.tmp").write_bytes(b"half")  # what a kill mid-write leaves
    split = ensure_class_images(pipe, class_dir=tmp_path / "split", num=4, **args)
    whole = ensure_class_images(pipe, class_dir=tmp_path / "whole", num=4, **args)
    assert [p.name for p in split] == [p.name for p in whole] == [f"class-{i:05d}.png" for i in range(4)]
    for a, b in zip(split, whole):
        assert a.read_bytes() == b.read_bytes()


def test_existing_images_are_kept_and_counted(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a_mine.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "class-00001.png")
    out = ensure_class_images(build_tiny_pipeline(), "a photo of a dog", tmp_path, num=3, resolution=64, steps=2)
    assert [p.name for p in out] == ["a_mine.png", "class-00000.png", "class-00001.png"]
    assert (pixels(tmp_path / "class-00001.png") == pixels(tmp_path / "a_mine.png")).all()  # not overwritten


def test_consecutive_runs():
    assert consecutive_runs([0, 1, 2, 5, 6, 9]) == [[0, 1, 2], [5, 6], [9]]


def test_bank_folder_names_are_those_earlier_versions_made():
    """A changed key or name would strand every user's class images: this one was computed by the previous release."""
    from dreambooth.training.class_images import bank_dir

    folder = bank_dir("tiny", "", "a photo of a golden retriever puppy big dog", 64, 25, 7.5, 0)
    assert folder.name == "a-photo-of-a-golden-retriever-puppy-big--28031876ec8c"
