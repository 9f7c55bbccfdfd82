import numpy as np
import pytest
from PIL import Image

from dreambooth.families.sd import build_tiny as build_tiny_pipeline
from dreambooth.training.class_images import ensure_class_images


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.mark.slow
def test_interrupted_generation_resumes_with_the_same_images(tmp_path):
    pipe = build_tiny_pipeline()
    args = dict(resolution=64, seed=11, steps=3, batch_size=1)
    ensure_class_images(pipe, [("a photo of a dog", tmp_path / "split", 2)], **args)  # "interrupted" after two
    (tmp_path / "split" / ".class-00002.png.x.tmp").write_bytes(b"half")  # what a kill mid-write leaves
    (split,) = ensure_class_images(pipe, [("a photo of a dog", tmp_path / "split", 4)], **args)
    (whole,) = ensure_class_images(pipe, [("a photo of a dog", tmp_path / "whole", 4)], **args)
    assert [p.name for p in split] == [p.name for p in whole] == [f"class-{i:05d}.png" for i in range(4)]
    for a, b in zip(split, whole):
        assert a.read_bytes() == b.read_bytes()


def test_existing_images_are_kept_and_counted(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a_mine.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "class-00001.png")
    (out,) = ensure_class_images(build_tiny_pipeline(), [("a photo of a dog", tmp_path, 3)], resolution=64, steps=2)
    assert [p.name for p in out] == ["a_mine.png", "class-00000.png", "class-00001.png"]
    assert (pixels(tmp_path / "class-00001.png") == pixels(tmp_path / "a_mine.png")).all()  # not overwritten


def test_prompts_sharing_batches_give_each_folder_the_images_it_gets_alone(tmp_path):
    """Class prompts in contexts draw together; image i of each folder still comes from seed + i, a gap in one folder
    is filled with the images a first run would have made there, and what is there already is not drawn again."""
    pipe = build_tiny_pipeline()
    args = dict(resolution=64, seed=5, steps=2)
    prompts = ["a photo of a dog", "a photo of a dog on the beach"]
    for k, p in enumerate(prompts):
        ensure_class_images(pipe, [(p, tmp_path / f"alone{k}", 3)], batch_size=1, **args)
    (tmp_path / "together0").mkdir()
    (tmp_path / "alone0" / "class-00001.png").replace(tmp_path / "together0" / "class-00001.png")
    found = ensure_class_images(pipe, [(p, tmp_path / f"together{k}", 3) for k, p in enumerate(prompts)], batch_size=4, **args)
    assert [[p.name for p in f] for f in found] == [[f"class-{i:05d}.png" for i in range(3)]] * 2
    for k in range(2):
        for i in (0, 2) if k == 0 else (0, 1, 2):
            a, b = pixels(tmp_path / f"alone{k}" / f"class-{i:05d}.png"), pixels(tmp_path / f"together{k}" / f"class-{i:05d}.png")
            assert np.abs(a - b).max() <= 2


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
        resolution=32,  # fp16 convolutions on a CPU are slow: the dtypes are the same at any size
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


def test_class_prompts_file_lines_join_the_class_prompt_once_each(tmp_path):
    import pytest

    from dreambooth.errors import UsageError
    from dreambooth.training.class_images import read_class_prompts, shares

    listed = tmp_path / "prompts.txt"
    listed.write_text("# contexts\na photo of a dog on the beach\n\n  a photo of a dog in the snow  \na photo of a dog\n")
    assert read_class_prompts("a photo of a dog", str(listed)) == [
        "a photo of a dog",
        "a photo of a dog on the beach",
        "a photo of a dog in the snow",
    ]
    assert read_class_prompts("a photo of a dog", "") == ["a photo of a dog"]
    assert shares(100, 3) == [34, 33, 33] and shares(2, 3) == [1, 1, 0]
    with pytest.raises(UsageError, match=r"--class-prompts-file .*missing\.txt: cannot read it"):
        read_class_prompts("a photo of a dog", str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UsageError, match=r"--class-prompts-file .*empty\.txt: holds no prompt"):
        read_class_prompts("", str(tmp_path / "empty.txt"))


@pytest.mark.slow
def test_several_class_prompts_each_get_their_images_in_the_bank_and_the_class_half_reads_them(photos, tmp_path):
    from dreambooth.config import TrainConfig
    from dreambooth.training.class_images import cache_root
    from dreambooth.training.setup import set_up

    contexts = tmp_path / "contexts.txt"
    contexts.write_text("a photo of a dog on the beach\na photo of a dog in the snow\n")
    bank = cache_root() / "class-images"
    before = set(bank.iterdir()) if bank.is_dir() else set()
    cfg = TrainConfig(model="tiny", instance_dir=str(photos), instance_prompt="a photo of sks dog",
                      output_dir=str(tmp_path / "run"), with_prior_preservation=True, class_prompt="a photo of a dog",
                      class_prompts_file=str(contexts), num_class_images=5, class_image_steps=2, batch_size=2,
                      num_samples=0, seed=4)  # fmt: skip
    run = set_up(cfg)
    made = sorted(set(bank.iterdir()) - before)
    counts = {folder.name.rsplit("-", 1)[0]: len(list(folder.glob("*.png"))) for folder in made}
    assert counts == {"a-photo-of-a-dog": 2, "a-photo-of-a-dog-on-the-beach": 2, "a-photo-of-a-dog-in-the-snow": 1}
    assert [p.caption for p in run.examples.sets["class"]] == [
        "a photo of a dog", "a photo of a dog", "a photo of a dog on the beach", "a photo of a dog on the beach",
        "a photo of a dog in the snow",
    ]  # fmt: skip
    class_half = [p for step in range(10) for p in run.examples.batch(step).prompts[2:]]
    assert set(class_half) == {"a photo of a dog", "a photo of a dog on the beach", "a photo of a dog in the snow"}
    # the plain prompt's images are those a run without the file draws into the same bank folder
    single = set_up(TrainConfig(**{**cfg.__dict__, "class_prompts_file": "", "class_dir": "", "num_class_images": 2,
                                   "output_dir": str(tmp_path / "single")}))  # fmt: skip
    assert set(bank.iterdir()) - before == set(made)
    assert {p.path for p in single.examples.sets["class"]} == {p.path for p in run.examples.sets["class"][:2]}
