"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet conditioned on its last hidden states, DDPM
with epsilon (1.x, 2.x-base) or v prediction (2.x 768-v), read from the scheduler config."""

from __future__ import annotations

from pathlib import Path

import torch

from ..objectives.ddpm import DDPM
from .base import Family, PromptEmbeddings, checkpoint_has
from .clip import load_clip_tokenizer, tiny_text_encoder, tokenize
from .unet import CLIP_TARGETS, UNET_MLP_TARGETS, UNET_TARGETS, native_resolution, tiny_vae

WIDTHS = {768: "sd1", 1024: "sd2"}  # the text encoder's width tells the generation apart


def recognise(pipe) -> bool:
    return (
        hasattr(pipe, "unet")
        and getattr(pipe, "text_encoder", None) is not None
        and getattr(pipe, "text_encoder_2", None) is None
    )


def recognise_file(path: Path) -> bool:
    return checkpoint_has(path, "model.diffusion_model.") and not checkpoint_has(path, "conditioner.embedders.1")


def version(pipe) -> str:
    return WIDTHS.get(pipe.text_encoder.config.hidden_size, "")


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str], device) -> PromptEmbeddings:
    """The last hidden state of the one encoder, as StableDiffusionPipeline computes it."""
    return {"hidden": encoders[0](tokenize(tokenizers[0], prompts, device))[0]}


def denoise(
    unet, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: PromptEmbeddings, geometry: torch.Tensor
) -> torch.Tensor:
    return unet(noisy, timesteps, prompts["hidden"]).sample


def kohya_module(module: str, unet_config) -> str:
    return module  # sd-scripts trains the diffusers UNet and writes its module names


def kohya_base_version(version: str) -> str:
    """sd-scripts' name of the generation; "" for an SD-shaped model of none (our embedded ones are 1.x-like)."""
    return {"sd2": "sd_v2", "": ""}.get(version, "sd_v1")


def single_file_options() -> dict:
    # SD 1.x/2.x checkpoints carry a safety checker (a second CLIP): the user's business, not loaded
    return {"safety_checker": None, "requires_safety_checker": False}


FAMILY = Family(
    name="sd",
    title="Stable Diffusion 1.x/2.x",
    pipeline_class="StableDiffusionPipeline",
    denoiser="unet",
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    objective=DDPM,
    recognise=recognise,
    recognise_file=recognise_file,
    versions=tuple(WIDTHS.values()),
    version=version,
    native_resolution=native_resolution,
    encode_prompts=encode_prompts,
    denoise=denoise,
    denoiser_targets=UNET_TARGETS,
    mlp_targets=UNET_MLP_TARGETS,
    text_encoder_targets=CLIP_TARGETS,
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te_"},
    kohya_module=kohya_module,
    kohya_base_version=kohya_base_version,
    adapters_words=("UNet", "UNet + text encoder"),
    legacy_names=("sd1", "sd2", "tiny", "unknown"),
    single_file_options=single_file_options,
    embeddings_elsewhere=True,
    embedding_keys={"text_encoder": "clip_l"},
)


def build_tiny(prediction_type: str = "epsilon", seed: int = 0):
    """A tiny SD-1.x-shaped pipeline with random weights and the real SD 1.x tokenizer.

    64 px images, 32x32x4 latents. Same seed -> bitwise the same weights, so a LoRA trained on
    `tiny` loads onto the `tiny` built by any later command.
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = load_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = tiny_vae(seed + 1)
    text_encoder = tiny_text_encoder(tokenizer, projection=False, seed=seed + 2)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
