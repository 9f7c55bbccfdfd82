"""The Z-Image path end to end on the tiny Z-Image-shaped model: train -> plain diffusers -> generate; resume."""

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline
from safetensors import safe_open
from test_flux import every_adapter_was_read, interrupted_then_resumed_equals_whole

import dreambooth.training.loop as train_mod
from dreambooth.cli import main
from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.errors import UsageError
from dreambooth.families.flux import build_tiny as build_tiny_flux
from dreambooth.families.z_image import FAMILY, captions
from dreambooth.families.z_image import build_tiny as build_tiny_z_image
from dreambooth.fields import settings
from dreambooth.generation import generate
from dreambooth.lora.files import WEIGHT_NAME, load_lora
from dreambooth.models import describe

COMFYUI_ENDINGS = (".lora.down.weight", ".lora.up.weight", ".lora_A.weight", ".lora_B.weight")


def z_image_run(photos, out, **kw) -> TrainConfig:
    base = dict(model="tiny-z-image", instance_dir=str(photos), instance_prompt="a photo of sks dog", output_dir=str(out),
                with_prior_preservation=True, class_prompt="a photo of a dog", num_class_images=2, class_image_steps=2,
                rank=4, learning_rate=1e-2, max_steps=4, num_samples=0, seed=3)  # fmt: skip
    return settings(TrainConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def z_image_lora(tmp_path_factory):
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("z-image") / "run"
    return train_mod.train(z_image_run(SAMPLE, out, max_steps=6, num_samples=1, sample_steps=2))


def draw(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", height=64, width=64, num_inference_steps=3, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0), output_type="np").images[0]  # fmt: skip


def test_tiny_z_image_is_described_as_z_image():
    info = describe(build_tiny_z_image(), "tiny-z-image")
    assert (info.family.name, info.version, info.prediction_type, info.native_resolution) == (
        "z-image", "tiny-z-image", "flow (velocity)", 64
    )  # fmt: skip


def test_prompt_embeddings_are_the_pipelines_own():
    pipe = build_tiny_z_image()
    prompts = ["a photo of sks dog", "a photo of a dog in the snow"]
    with torch.no_grad():
        ours = FAMILY.encode_prompts([pipe.tokenizer], [pipe.text_encoder], prompts, "cpu")
        theirs, _ = pipe.encode_prompt(list(prompts), "cpu", do_classifier_free_guidance=False)
    ours = captions(ours)
    assert [c.shape[0] for c in ours] == [c.shape[0] for c in theirs] and ours[0].shape[0] < ours[1].shape[0]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, theirs))


def test_denoise_is_the_pipelines_velocity():
    """The pipeline steps with -transformer(x, 1 - s): a flow-matching Euler step with our velocity lands where its
    own step does."""
    pipe = build_tiny_z_image()
    noisy, s = torch.randn(1, 16, 8, 8), torch.tensor([0.7])
    with torch.no_grad():
        prompts = FAMILY.encode_prompts([pipe.tokenizer], [pipe.text_encoder], ["a photo of sks dog"], "cpu")
        ours = FAMILY.denoise(pipe.transformer, noisy, s * 1000, prompts, torch.zeros(1, 6))
        theirs = pipe.transformer([noisy[0].unsqueeze(1)], 1 - s, captions(prompts), return_dict=False)[0][0]
    assert torch.equal(ours[0], -theirs.squeeze(1))


def test_z_image_lora_loads_in_plain_diffusers_and_changes_the_image(z_image_lora, tmp_path):
    folder = tmp_path / "base"
    build_tiny_z_image().save_pretrained(folder)
    pipe = ZImagePipeline.from_pretrained(folder)
    before = draw(pipe)
    pipe.load_lora_weights(z_image_lora)
    assert every_adapter_was_read(pipe.transformer)
    assert not getattr(pipe.text_encoder, "peft_config", None)  # Qwen3 is never trained
    assert np.abs(draw(pipe) - before).mean() > 1e-3
    card = (z_image_lora / "README.md").read_text()
    assert (z_image_lora / "samples.png").is_file() and "ZImagePipeline" in card
    assert "ComfyUI loads `pytorch_lora_weights.safetensors` as it is" in card


def test_the_file_is_named_as_comfyui_reads_z_image_loras(z_image_lora):
    """ComfyUI's model_lora_keys_unet maps, for its Z-Image model (Lumina2 there), `transformer.<diffusers module>`
    of every block's attention and feed-forward to its own weights (the q/k/v parts of its fused qkv), and its
    loader reads the up and down weights as `.lora.up.weight` / `.lora.down.weight` (or peft's lora_B / lora_A)."""
    with safe_open(str(z_image_lora / WEIGHT_NAME), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and k.endswith(COMFYUI_ENDINGS) for k in keys)
    modules = {k.removeprefix("transformer.").rsplit(".lora", 1)[0] for k in keys}
    blocks = ("layers.0.", "layers.1.", "noise_refiner.0.", "context_refiner.0.")
    assert modules == {f"{b}attention.{p}" for b in blocks for p in ("to_q", "to_k", "to_v", "to_out.0")}


def test_generate_draws_with_the_z_image_base(z_image_lora, tmp_path):
    paths = generate(GenerateConfig(lora=str(z_image_lora), prompt="a photo of sks dog on the beach", num_images=1, steps=2,
                                    negative_prompt="blurry", output_dir=str(tmp_path / "g")))  # fmt: skip
    assert len(paths) == 1 and "model: tiny-z-image" in (tmp_path / "g" / "config.yaml").read_text()


def test_a_lora_of_another_family_is_one_line(z_image_lora, tmp_path):
    with pytest.raises(UsageError) as err:
        load_lora(build_tiny_flux(), z_image_lora, model="tiny-flux")
    assert "\n" not in str(err.value) and "made for tiny-z-image" in str(err.value)


def test_training_its_text_encoder_is_refused_in_one_line(photos, tmp_path, capsys):
    args = ["train", "--model", "tiny-z-image", "--instance-dir", str(photos), "--instance-prompt", "a photo of sks dog",
            "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--num-samples", "0", "--train-text-encoder"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--train-text-encoder" in err and "Z-Image" in err
    assert not (tmp_path / "run" / WEIGHT_NAME).exists()


@pytest.mark.slow  # seconds of a whole run: the full suite keeps it, the fast lane does not
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(photos, tmp_path, monkeypatch):
    interrupted_then_resumed_equals_whole(z_image_run, photos, tmp_path, monkeypatch, prior_mode="base-prediction")
