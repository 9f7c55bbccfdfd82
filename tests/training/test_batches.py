import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.config import TrainConfig
from dreambooth.families import sd, sdxl
from dreambooth.families.sdxl import build_tiny as build_tiny_sdxl_pipeline
from dreambooth.training.batches import Examples, stream_indices
from dreambooth.training.photos import Photo


def test_stream_visits_every_item_once_per_epoch():
    seen = stream_indices(0, 15, 5, seed=3)
    for epoch in range(3):
        assert sorted(seen[epoch * 5 : epoch * 5 + 5]) == [0, 1, 2, 3, 4]
    assert stream_indices(7, 4, 5, seed=3) == seen[7:11]  # any slice of the stream, e.g. after a resume


def test_sdxl_geometry_records_the_real_crop():
    pipe = build_tiny_sdxl_pipeline()
    wide = Image.new("RGB", (300, 120), "red")
    wide.paste((0, 0, 255), (150, 0, 300, 120))
    cfg = TrainConfig(resolution=64, center_crop=False, random_flip=True, batch_size=1, seed=5)
    examples = Examples(
        cfg,
        sdxl.FAMILY,
        pipe.vae,
        [pipe.tokenizer, pipe.tokenizer_2],
        [pipe.text_encoder, pipe.text_encoder_2],
        "cpu",
        torch.float32,
        [Photo(None, wide, None)],
        [],
    )
    corners = set()
    for micro in range(8):
        batch = examples.batch(micro)
        h, w, top, left, th, tw = batch.geometry[0].tolist()
        assert (h, w, th, tw) == (120, 300, 64, 64)
        assert top == 0 and 0 <= left <= 160 - 64  # 300x120 resized to 160x64
        corners.add(left)
    assert len(corners) > 1  # random crops, each recorded


def test_sdxl_prompts_give_hidden_states_of_both_encoders_and_a_pooled_embedding():
    pipe = build_tiny_sdxl_pipeline()
    examples = Examples(
        TrainConfig(),
        sdxl.FAMILY,
        pipe.vae,
        [pipe.tokenizer, pipe.tokenizer_2],
        [pipe.text_encoder, pipe.text_encoder_2],
        "cpu",
        torch.float32,
        [],
        [],
    )
    embedded = examples.encode(["a photo of sks dog", "a photo of a dog"])
    hidden, pooled = embedded["hidden"], embedded["pooled"]
    assert hidden.shape == (2, 77, 64) and pooled.shape == (2, 32)
    reference = pipe.encode_prompt(["a photo of sks dog", "a photo of a dog"], device="cpu", do_classifier_free_guidance=False)
    assert torch.allclose(hidden, reference[0], atol=1e-6) and torch.allclose(pooled, reference[2], atol=1e-6)


def test_precomputing_everything_up_front_changes_no_batch(photos):
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline
    from dreambooth.training.photos import load_folder

    pipe, images = build_tiny_pipeline(), load_folder(photos)
    cfg = TrainConfig(
        resolution=64,
        random_flip=True,
        with_prior_preservation=True,
        class_prompt="a photo of a dog",
        instance_prompt="a photo of sks dog",
        batch_size=2,
    )
    ahead = Examples(cfg, sd.FAMILY, pipe.vae, [pipe.tokenizer], [pipe.text_encoder], "cpu", torch.float32, images, images[:2])
    lazy = Examples(cfg, sd.FAMILY, pipe.vae, [pipe.tokenizer], [pipe.text_encoder], "cpu", torch.float32, images, images[:2])
    ahead.precompute()
    assert len(ahead.posteriors) == (5 + 2) * 2  # every image, both flips
    for micro in range(6):
        x, y = ahead.batch(micro), lazy.batch(micro)
        assert torch.equal(x.latents, y.latents) and x.prompts == y.prompts
        assert torch.equal(ahead.encode(x.prompts)["hidden"], lazy.encode(y.prompts)["hidden"])


def test_adapters_off_runs_the_base_model_and_restores_the_adapter():
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline
    from dreambooth.lora.adapter import adapters_off, add_lora

    unet = build_tiny_pipeline().unet
    x, t, h = torch.randn(1, 4, 32, 32), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        base = unet(x, t, h).sample
        params = add_lora(unet, 4, 4.0, 0.0, ["to_q", "to_k", "to_v", "to_out.0"])
        for p in params:
            torch.nn.init.normal_(p)  # the fresh adapter is a no-op (lora_B = 0): make it change the output
        tuned = unet(x, t, h).sample
        assert not torch.allclose(tuned, base)
        for _ in range(2):  # the second time through uses the cached list of adapter layers
            with adapters_off(unet):
                assert torch.equal(unet(x, t, h).sample, base)
            assert torch.equal(unet(x, t, h).sample, tuned)
    assert all(p.requires_grad for p in params)  # still trainable after the base model's turn


def test_a_vae_that_must_run_in_fp32_encodes_photos_in_fp32_in_an_fp16_run(photos):
    """As a GPU run with --mixed-precision fp16 sets it up: the models in fp16, each batch drawn under fp16 autocast."""
    from vae_dtypes import watch_vae

    from dreambooth.models import describe
    from dreambooth.training.photos import load_folder
    from dreambooth.training.setup import adapt, resolved

    pipe = build_tiny_sdxl_pipeline()
    pipe.vae.register_to_config(force_upcast=True)  # as SDXL's own VAE asks
    cfg = resolved(TrainConfig(instance_prompt="a photo of sks dog", batch_size=2), describe(pipe, "tiny-sdxl"))
    adapt(cfg, pipe, sdxl.FAMILY, "cpu", torch.float16)
    seen = watch_vae(pipe.vae)
    examples = Examples(
        cfg,
        sdxl.FAMILY,
        pipe.vae,
        [pipe.tokenizer, pipe.tokenizer_2],
        [pipe.text_encoder, pipe.text_encoder_2],
        "cpu",
        torch.float16,
        load_folder(photos),
        [],
    )
    with torch.autocast("cpu", dtype=torch.float16):
        batch = examples.batch(0)
    assert pipe.vae.dtype == torch.float32 and seen["encoder"] == {torch.float32}
    assert batch.latents.dtype == torch.float16 and torch.isfinite(batch.latents).all()


@pytest.mark.slow
def test_caption_dropout_empties_that_share_of_instance_prompts_and_nothing_else(photos):
    """--caption-dropout on the photos' prompts; --class-caption-dropout on the class images' alone."""
    from dreambooth.config import TrainConfig
    from dreambooth.models import describe, load_pipeline
    from dreambooth.training.photos import load_folder
    from dreambooth.training.setup import make_accelerator, prepare, resolved

    def prompts(dropout: float, steps: int = 40, class_dropout: float = 0.0) -> list[list[str]]:
        cfg = TrainConfig(model="tiny", instance_dir=str(photos), instance_prompt="a photo of sks dog", output_dir="unused",
                          class_dir="unused", with_prior_preservation=True, class_prompt="a photo of a dog", batch_size=2,
                          caption_dropout=dropout, class_caption_dropout=class_dropout, num_samples=0)  # fmt: skip
        pipe = load_pipeline("tiny")
        base = describe(pipe, "tiny")
        images = load_folder(str(photos))
        run = prepare(resolved(cfg, base), pipe, base, images, images, make_accelerator(cfg))
        return [run.examples.batch(step).prompts for step in range(steps)]

    none, all_, half = prompts(0.0), prompts(1.0), prompts(0.3)
    assert all(p == ["a photo of sks dog"] * 2 + ["a photo of a dog"] * 2 for p in none)
    assert all(p == ["", "", "a photo of a dog", "a photo of a dog"] for p in all_)
    instance = [x for p in half for x in p[:2]]
    assert 0.15 < instance.count("") / len(instance) < 0.45  # 80 draws at 0.3
    assert all(p[2:] == ["a photo of a dog"] * 2 for p in half)  # class prompts are never dropped
    assert half == prompts(0.3)  # the same examples drop their caption in every run and on resume
    # --class-caption-dropout: the class half's prompts, the photos' untouched
    classes = prompts(0.0, class_dropout=0.3)
    assert all(p[:2] == ["a photo of sks dog"] * 2 for p in classes)
    assert 0.15 < [x for p in classes for x in p[2:]].count("") / 80 < 0.45
    assert all(p[2:] == ["", ""] for p in prompts(0.0, class_dropout=1.0))


def subject_photo() -> Photo:
    """A wide photo with a red subject off-centre (in every 64 px crop), and its exact mask."""
    image, mask = Image.new("RGB", (160, 128), "white"), Image.new("L", (160, 128), 0)
    image.paste((255, 0, 0), (24, 40, 96, 120))
    mask.paste(255, (24, 40, 96, 120))
    return Photo(None, image, None, mask)


def test_the_mask_reaches_the_latent_grid_with_its_photos_crop_and_flip():
    import torch.nn.functional as F

    from dreambooth.families.sd import build_tiny as build_tiny_pipeline
    from dreambooth.training.batches import example_generator
    from dreambooth.training.photos import resize_and_crop

    pipe = build_tiny_pipeline()
    cfg = TrainConfig(resolution=64, center_crop=False, random_flip=True, batch_size=1, seed=5, masked_loss=True,
                      with_prior_preservation=True, class_prompt="a photo of a dog")  # fmt: skip
    photo, other = subject_photo(), Photo(None, Image.new("RGB", (64, 64), "blue"), None)
    examples = Examples(cfg, sd.FAMILY, pipe.vae, [pipe.tokenizer], [pipe.text_encoder], "cpu", torch.float32, [photo], [other])
    flips = set()
    for micro in range(8):
        batch = examples.batch(micro)
        latent_grid = batch.latents.shape[-2:]
        assert batch.masks.shape == (2, 1, *latent_grid) and latent_grid == (32, 32)  # the tiny VAE's real factor: 2
        assert torch.equal(batch.masks[1], torch.ones(1, *latent_grid))  # class examples count whole
        # the photo as this example saw it: the subject's pixels, area-averaged onto the latent grid
        g = example_generator(cfg.seed, "instance", micro)
        flip = bool(torch.randint(0, 2, (1,), generator=g))
        crop, _ = resize_and_crop(photo.image, 64, False, g, flip)
        subject = torch.from_numpy((np.asarray(crop)[..., 1] < 128).astype(np.float32))[None, None]
        expected = F.interpolate(subject, size=latent_grid, mode="area")[0]
        assert (batch.masks[0] - expected).abs().max() < 0.2  # resampling softens the edge; a misplaced mask is off by 1
        assert (batch.masks[0] - expected.flip(-1)).abs().max() > 0.9  # (the subject is not symmetric)
        flips.add(flip)
    assert flips == {False, True}
    unmasked = Examples(TrainConfig(resolution=64, center_crop=False, random_flip=True, batch_size=1, seed=5),
                        sd.FAMILY, pipe.vae, [pipe.tokenizer], [pipe.text_encoder], "cpu", torch.float32, [photo], [])  # fmt: skip
    assert unmasked.batch(0).masks is None
    assert torch.equal(unmasked.batch(3).latents, Examples(cfg, sd.FAMILY, pipe.vae, [pipe.tokenizer], [pipe.text_encoder],
                       "cpu", torch.float32, [photo], [other]).batch(3).latents[:1])  # fmt: skip  # masks draw nothing


def test_masks_are_cached_with_their_latents():
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    pipe = build_tiny_pipeline()
    cfg = TrainConfig(resolution=64, random_flip=True, batch_size=2, seed=1, masked_loss=True)
    photos = [subject_photo(), Photo(None, Image.new("RGB", (64, 64), "blue"), None)]  # the second has no mask
    ahead = Examples(cfg, sd.FAMILY, pipe.vae, [pipe.tokenizer], [pipe.text_encoder], "cpu", torch.float32, photos, [])
    lazy = Examples(cfg, sd.FAMILY, pipe.vae, [pipe.tokenizer], [pipe.text_encoder], "cpu", torch.float32, photos, [])
    ahead.precompute()
    assert all(cached[3] is not None for (_, idx, *_), cached in ahead.posteriors.items() if idx == 0)
    for micro in range(4):
        x, y = ahead.batch(micro), lazy.batch(micro)
        assert torch.equal(x.masks, y.masks) and torch.equal(x.latents, y.latents)
        assert 0 < x.masks.sum() < x.masks.numel()
