"""The SD3 path end to end on the tiny SD3.5 Medium-shaped model: train -> plain diffusers -> generate; resume."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from test_flux import every_adapter_was_read, interrupted_then_resumed_equals_whole

import dreambooth.training.loop as train_mod
from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.flux import build_tiny as build_tiny_flux
from dreambooth.families.sd3 import build_tiny as build_tiny_sd3
from dreambooth.fields import settings
from dreambooth.generation import generate
from dreambooth.lora.files import load_lora
from dreambooth.models import describe


def sd3_run(photos, out, **kw) -> TrainConfig:
    base = dict(model="tiny-sd3", instance_dir=str(photos), instance_prompt="a photo of sks dog", output_dir=str(out),
                with_prior_preservation=True, class_prompt="a photo of a dog", num_class_images=2, class_image_steps=2,
                train_text_encoder=True, rank=4, learning_rate=1e-2, text_encoder_lr=1e-2, max_steps=4, num_samples=0,
                seed=2)  # fmt: skip
    return settings(TrainConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def sd3_lora(tmp_path_factory):
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("sd3") / "run"
    return train_mod.train(sd3_run(SAMPLE, out, max_steps=6, num_samples=1, sample_steps=2, weighting_scheme="mode"))


def test_tiny_sd3_is_described_as_sd3():
    info = describe(build_tiny_sd3(), "tiny-sd3")
    assert (info.family.name, info.version, info.prediction_type, info.native_resolution) == (
        "sd3", "tiny-sd3", "flow (velocity)", 64
    )  # fmt: skip


def test_sd3_lora_loads_in_plain_diffusers_and_changes_the_image(sd3_lora, tmp_path):
    folder = tmp_path / "base"
    build_tiny_sd3().save_pretrained(folder)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return pipe("a photo of sks dog", num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                    output_type="np", max_sequence_length=32).images[0]  # fmt: skip

    before = draw()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.load_lora_weights(sd3_lora)
    assert not [w for w in caught if "exclude_modules" in str(w.message) or "inconsistency" in str(w.message)]
    for model in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2):
        assert every_adapter_was_read(model)
    assert not getattr(pipe.text_encoder_3, "peft_config", None)  # T5 is never trained
    assert np.abs(draw() - before).mean() > 1e-3
    assert "StableDiffusion3Pipeline" in (sd3_lora / "README.md").read_text()


def test_generate_draws_with_the_sd3_base(sd3_lora, tmp_path):
    paths = generate(GenerateConfig(lora=str(sd3_lora), prompt="a photo of sks dog on the beach", num_images=1, steps=2,
                                    negative_prompt="blurry", output_dir=str(tmp_path / "g")))  # fmt: skip
    assert len(paths) == 1


def test_a_flux_lora_on_an_sd3_base_is_one_line(sd3_lora, tmp_path):
    with pytest.raises(UsageError) as err:
        load_lora(build_tiny_flux(), sd3_lora, model="tiny-flux")
    assert "\n" not in str(err.value) and "made for tiny-sd3" in str(err.value)


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(photos, tmp_path, monkeypatch):
    interrupted_then_resumed_equals_whole(sd3_run, photos, tmp_path, monkeypatch, prior_mode="base-prediction")


def test_prompt_embeddings_are_the_pipelines_own():
    from dreambooth.families.sd3 import FAMILY, joint_tokens

    pipe = build_tiny_sd3()
    pipe.tokenizer_3.model_max_length = 32
    prompts = ["a photo of sks dog", "a photo of a dog in the snow"]
    with torch.no_grad():
        ours = FAMILY.encode_prompts([pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3],
                                     [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3], prompts, "cpu")  # fmt: skip
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=32)
    assert torch.allclose(joint_tokens(ours), hidden, atol=1e-6) and torch.allclose(ours["pooled"], pooled, atol=1e-6)
