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


def test_class_image_banks_are_kept_apart_by_the_precision_they_are_drawn_in():
    from dreambooth.training.class_images import bank_dir

    settings = ("tiny", "", "a photo of a dog", 64, 25, 7.5, 0)
    fp32, fp16, bf16 = (bank_dir(*settings, precision) for precision in ("fp32", "fp16", "bf16"))
    assert len({fp32, fp16, bf16}) == 3
    assert fp32 == bank_dir(*settings)  # drawn without autocast, as earlier versions keyed them


def test_class_images_drawn_under_a_gpus_fp16_autocast_decode_in_fp32_into_their_own_bank(photos, monkeypatch):
    """As on a GPU: class images drawn under fp16 autocast (here the CPU's), into the bank of fp16 drawings."""
    import torch
    from vae_dtypes import watch_vae

    from dreambooth.config import TrainConfig
    from dreambooth.models import describe, load_pipeline
    from dreambooth.training import setup

    monkeypatch.setattr(setup, "class_image_precision", lambda device: torch.float16)
    asked = TrainConfig(
        model="tiny-sdxl",
        instance_dir=str(photos),
        instance_prompt="a photo of sks dog",
        class_prompt="a photo of a dog",
        with_prior_preservation=True,
        num_class_images=1,
        class_image_steps=2,
    )
    accelerator = setup.make_accelerator(asked)
    pipe = load_pipeline("tiny-sdxl")
    pipe.vae.register_to_config(force_upcast=True)  # as SDXL's own VAE asks
    base = describe(pipe, "tiny-sdxl")
    cfg = setup.resolved(asked, base, setup.class_image_precision(accelerator.device))
    assert cfg.class_dir != setup.resolved(asked, base, torch.float32).class_dir
    seen = watch_vae(pipe.vae)
    assert len(setup.class_photos(cfg, pipe, accelerator)) == 1
    assert seen["decoder"] == {torch.float32}
