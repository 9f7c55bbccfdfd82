import numpy as np
import pytest
import torch
from vae_dtypes import watch_vae

from dreambooth.models import load_pipeline
from dreambooth.objectives.ddpm import fast_sampler
from dreambooth.sampling import draw, draw_each


def fp16_autocast():
    return torch.autocast("cpu", dtype=torch.float16)


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_images_are_those_the_pipeline_finishes_itself(model):
    """Without autocast, decoding the pipeline's latents here changes no pixel."""
    pipe = load_pipeline(model)
    drawn = draw(pipe, "a photo of a dog", 2, seed=4, steps=2, guidance=7.5, resolution=64)
    pipe.scheduler = fast_sampler(pipe)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        own = pipe(
            ["a photo of a dog"] * 2,
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=7.5,
            generator=[torch.Generator().manual_seed(4 + i) for i in range(2)],
        ).images
    for a, b in zip(drawn, own):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("model", ["tiny", "tiny-qwen-image"])
def test_prompts_sharing_batches_draw_what_each_draws_alone(model):
    """Validation draws its prompts together: the same seeds, and the same images up to batched arithmetic's rounding
    (Qwen-Image pads the shorter prompt and masks the padding)."""
    pipe = load_pipeline(model)
    prompts = ["a photo of sks dog", "a photo of sks dog on the beach in the snow"]
    together = draw_each(pipe, prompts, 2, seed=3, steps=2, guidance=4.0, resolution=64, batch_size=3)
    assert list(together) == prompts and [len(v) for v in together.values()] == [2, 2]
    for prompt in prompts:
        alone = draw(pipe, prompt, 2, seed=3, steps=2, guidance=4.0, resolution=64, batch_size=2)
        for a, b in zip(together[prompt], alone):
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2


def test_a_vae_that_must_run_in_fp32_decodes_in_fp32_under_fp16_autocast():
    pipe = load_pipeline("tiny-sdxl")
    pipe.vae.register_to_config(force_upcast=True)  # as SDXL's own VAE asks
    seen = watch_vae(pipe.vae)
    images = draw(pipe, "a photo of a dog", 1, seed=0, steps=2, guidance=7.5, resolution=32, autocast=fp16_autocast)
    assert seen["decoder"] == {torch.float32}
    assert images[0].size == (32, 32)


def test_an_fp16_safe_vae_decodes_under_the_autocast():
    pipe = load_pipeline("tiny-sdxl")
    pipe.vae.register_to_config(force_upcast=False)  # as an fp16-safe VAE's config says
    seen = watch_vae(pipe.vae)
    draw(pipe, "a photo of a dog", 1, seed=0, steps=2, guidance=7.5, resolution=32, autocast=fp16_autocast)
    assert torch.float16 in seen["decoder"]
