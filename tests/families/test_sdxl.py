"""The SDXL path end to end on the tiny SDXL model: train -> plain diffusers -> generate."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.sd import build_tiny as build_tiny_pipeline
from dreambooth.families.sdxl import build_tiny as build_tiny_sdxl_pipeline
from dreambooth.generation import generate
from dreambooth.lora.files import load_lora
from dreambooth.models import describe
from dreambooth.training.loop import train


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory):
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("sdxl") / "run"
    train(
        TrainConfig(
            model="tiny-sdxl",
            instance_dir=str(SAMPLE),
            instance_prompt="a photo of sks dog",
            output_dir=str(out),
            with_prior_preservation=True,
            class_prompt="a photo of a dog",
            num_class_images=2,
            class_image_steps=2,
            train_text_encoder=True,
            rank=4,
            learning_rate=1e-2,
            text_encoder_lr=1e-2,
            max_steps=8,
            num_samples=1,
            sample_steps=2,
            random_flip=True,
            center_crop=False,
        )
    )
    return out


def draw(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images[
        0
    ]


def test_tiny_sdxl_is_described_as_sdxl():
    info = describe(build_tiny_sdxl_pipeline(), "tiny-sdxl")
    assert (info.family.name, info.version, info.prediction_type, info.native_resolution) == ("sdxl", "tiny-sdxl", "epsilon", 64)
    assert describe(build_tiny_sdxl_pipeline()).version == "sdxl"  # the generation, for any SDXL-shaped model


@pytest.mark.slow
def test_sdxl_lora_loads_in_plain_diffusers_with_both_text_encoders(sdxl_lora, tmp_path):
    folder = tmp_path / "base"
    build_tiny_sdxl_pipeline().save_pretrained(folder)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    before = draw(pipe)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.load_lora_weights(sdxl_lora)
    # nothing a user must puzzle over: an exclusion that matched nothing, or adapters the file has no weights for
    assert not [w for w in caught if "exclude_modules" in str(w.message) or "inconsistency" in str(w.message)]
    assert pipe.unet.peft_config and pipe.text_encoder.peft_config and pipe.text_encoder_2.peft_config
    assert np.abs(draw(pipe) - before).mean() > 1e-3
    card = (sdxl_lora / "README.md").read_text()
    assert (sdxl_lora / "samples.png").is_file() and "tiny-sdxl" in card and "StableDiffusionXLPipeline" in card


def test_generate_uses_the_sdxl_base_it_was_trained_on(sdxl_lora, tmp_path):
    paths = generate(
        GenerateConfig(
            lora=str(sdxl_lora),
            prompt="a photo of sks dog on the beach",
            num_images=2,
            steps=2,
            text_encoder_scale=0.5,
            output_dir=str(tmp_path / "g"),
        )
    )
    assert len(paths) == 2 and "model: tiny-sdxl" in (tmp_path / "g" / "config.yaml").read_text()


def test_sd1_lora_is_refused_by_an_sdxl_pipeline_with_one_line(sdxl_lora, photos, tmp_path):
    sd1 = train(
        TrainConfig(
            model="tiny",
            instance_dir=str(photos),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "sd1"),
            rank=2,
            max_steps=1,
            num_samples=0,
        )
    )
    with pytest.raises(UsageError) as err:
        load_lora(build_tiny_sdxl_pipeline(), sd1, model="tiny-sdxl")
    message = str(err.value)
    assert "\n" not in message and "made for tiny (tiny)" in message and "--model tiny-sdxl is tiny-sdxl" in message
    with pytest.raises(UsageError, match="made for tiny-sdxl"):
        load_lora(build_tiny_pipeline(), sdxl_lora, model="tiny")
