"""The FLUX.2 [klein] path end to end on the tiny [klein]-shaped model: train -> plain diffusers -> generate; resume."""

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from safetensors import safe_open
from test_flux import every_adapter_was_read, interrupted_then_resumed_equals_whole
from test_z_image import COMFYUI_ENDINGS

import dreambooth.training.loop as train_mod
from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.flux2_klein import FAMILY
from dreambooth.families.flux2_klein import build_tiny as build_tiny_klein
from dreambooth.families.z_image import build_tiny as build_tiny_z_image
from dreambooth.fields import settings
from dreambooth.generation import generate
from dreambooth.lora.files import WEIGHT_NAME, load_lora
from dreambooth.models import describe
from dreambooth.sampling import to_images


def klein_run(photos, out, **kw) -> TrainConfig:
    base = dict(model="tiny-flux2-klein", instance_dir=str(photos), instance_prompt="a photo of sks dog",
                output_dir=str(out), with_prior_preservation=True, class_prompt="a photo of a dog", num_class_images=2,
                class_image_steps=2, rank=4, learning_rate=1e-2, max_steps=4, num_samples=0, seed=4)  # fmt: skip
    return settings(TrainConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def klein_lora(tmp_path_factory):
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("klein") / "run"
    # at 1e-2 six steps move the tiny model's images by 5e-4 on average: too little to tell from rounding
    run = klein_run(SAMPLE, out, max_steps=6, num_samples=1, sample_steps=2, weighting_scheme="logit_normal", learning_rate=3e-2)
    return train_mod.train(run)


def draw(pipe, output_type="np"):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a photo of sks dog", height=64, width=64, num_inference_steps=3, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0), output_type=output_type, max_sequence_length=32).images  # fmt: skip


def test_tiny_klein_is_described_as_flux2_klein():
    info = describe(build_tiny_klein(), "tiny-flux2-klein")
    assert (info.family.name, info.version, info.prediction_type, info.native_resolution) == (
        "flux2-klein", "tiny-flux2-klein", "flow (velocity)", 64
    )  # fmt: skip


def test_prompt_embeddings_are_the_pipelines_own():
    pipe = build_tiny_klein()
    pipe.tokenizer.model_max_length = 32
    prompts = ["a photo of sks dog", "a photo of a dog in the snow"]
    with torch.no_grad():
        ours = FAMILY.encode_prompts([pipe.tokenizer], [pipe.text_encoder], prompts, "cpu")
        theirs, _ = pipe.encode_prompt(list(prompts), "cpu", max_sequence_length=32)
    assert ours["hidden"].shape == (2, 32, 48) and torch.allclose(ours["hidden"], theirs, atol=1e-6)


def test_latents_are_normalised_and_decoded_as_the_pipeline_does():
    """The VAE's batch-norm statistics of the 2x2 patches: what the pipeline returns as latents, normalised as training
    sees latents and decoded by this tool, is the pipeline's own image."""
    pipe = build_tiny_klein()
    image = draw(pipe)[0]
    latents = draw(pipe, "latent")
    with torch.no_grad():
        ours = to_images(pipe, FAMILY.sampled_latents(pipe, latents, 64, 64))[0]
    assert np.abs(np.asarray(ours, dtype=np.float32) / 255 - image).max() < 3 / 255
    assert not torch.allclose(FAMILY.sampled_latents(pipe, latents, 64, 64), latents, atol=1e-2)  # no identity


@pytest.mark.slow
def test_klein_lora_loads_in_plain_diffusers_and_changes_the_image(klein_lora, tmp_path):
    folder = tmp_path / "base"
    build_tiny_klein().save_pretrained(folder)
    pipe = Flux2KleinPipeline.from_pretrained(folder)
    before = draw(pipe)[0]
    pipe.load_lora_weights(klein_lora)
    assert every_adapter_was_read(pipe.transformer)
    assert not getattr(pipe.text_encoder, "peft_config", None)  # Qwen3 is never trained
    assert np.abs(draw(pipe)[0] - before).mean() > 1e-3
    card = (klein_lora / "README.md").read_text()
    assert (klein_lora / "samples.png").is_file() and "Flux2KleinPipeline" in card


def test_the_file_is_named_as_comfyui_reads_flux2_loras(klein_lora):
    """ComfyUI runs FLUX.2 as its FLUX model, whose key map reads `transformer.<diffusers module>` through
    flux_to_diffusers: the joint blocks' q/k/v (into the fused qkv), out and text-stream projections, and the single
    blocks' `attn.to_qkv_mlp_proj` and `attn.to_out`, as here (the joint blocks' `attn.to_out` list not)."""
    with safe_open(str(klein_lora / WEIGHT_NAME), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and k.endswith(COMFYUI_ENDINGS) for k in keys)
    modules = {k.removeprefix("transformer.").rsplit(".lora", 1)[0] for k in keys}
    joint = {f"transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                        "add_v_proj", "to_add_out")}  # fmt: skip
    assert modules == joint | {"single_transformer_blocks.0.attn.to_qkv_mlp_proj", "single_transformer_blocks.0.attn.to_out"}


@pytest.mark.slow
def test_generate_draws_with_the_klein_base(klein_lora, tmp_path):
    paths = generate(GenerateConfig(lora=str(klein_lora), prompt="a photo of sks dog on the beach", num_images=1, steps=2,
                                    output_dir=str(tmp_path / "g")))  # fmt: skip
    assert len(paths) == 1 and "model: tiny-flux2-klein" in (tmp_path / "g" / "config.yaml").read_text()
    with pytest.raises(UsageError, match="--negative-prompt: Flux2KleinPipeline takes no negative prompt"):
        generate(GenerateConfig(lora=str(klein_lora), prompt="a photo of sks dog", negative_prompt="blurry", num_images=1,
                                steps=2, output_dir=str(tmp_path / "n")))  # fmt: skip


def test_a_lora_of_another_family_is_one_line(klein_lora, tmp_path):
    with pytest.raises(UsageError) as err:
        load_lora(build_tiny_z_image(), klein_lora, model="tiny-z-image")
    assert "\n" not in str(err.value) and "made for tiny-flux2-klein" in str(err.value)


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(photos, tmp_path, monkeypatch):
    interrupted_then_resumed_equals_whole(klein_run, photos, tmp_path, monkeypatch, prior_mode="base-prediction")
