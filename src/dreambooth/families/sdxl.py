"""SDXL: two CLIP text encoders (penultimate hidden states side by side, the second's projected pooled embedding)
and micro-conditioning on each example's original size, crop corner and target size; DDPM, epsilon."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import UsageError
from ..objectives.ddpm import DDPM
from .base import Family, PromptEmbeddings, checkpoint_has
from .clip import load_clip_tokenizer, tiny_text_encoder, tokenize
from .unet import CLIP_TARGETS, UNET_MLP_TARGETS, UNET_TARGETS, native_resolution, tiny_vae


def recognise(pipe) -> bool:
    return hasattr(pipe, "unet") and getattr(pipe, "text_encoder_2", None) is not None


def recognise_file(path: Path) -> bool:
    """SDXL single-file checkpoints hold a second text encoder under `conditioner.embedders.1`."""
    return checkpoint_has(path, "conditioner.embedders.1")


def version(pipe) -> str:
    return "sdxl"


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str], device) -> PromptEmbeddings:
    """As StableDiffusionXLPipeline computes them: both encoders' penultimate hidden states side by side, and the
    second encoder's projected pooled embedding."""
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, encoders):
        out = encoder(tokenize(tokenizer, prompts, device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    assert pooled is not None, "SDXL's second text encoder has a projection"
    return {"hidden": torch.cat(hidden, dim=-1), "pooled": pooled}


def unread_modules(component: str, model) -> str | None:
    """The first encoder's last layer: only its penultimate hidden states are read (the second encoder's last layer
    feeds its pooled embedding)."""
    if component != "text_encoder":
        return None
    return rf".*encoder\.layers\.{model.config.num_hidden_layers - 1}\..*"


def denoise(
    unet, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: PromptEmbeddings, geometry: torch.Tensor
) -> torch.Tensor:
    """`geometry` rows are SDXL's time ids: original size, the crop's corner, target size."""
    pooled = prompts["pooled"]
    extra = {"text_embeds": pooled, "time_ids": geometry.to(pooled.device, pooled.dtype)}
    return unet(noisy, timesteps, prompts["hidden"], added_cond_kwargs=extra).sample


def kohya_module(module: str, unet_config) -> str:
    """A diffusers UNet attention-module path -> the original (sgm) UNet's path, which sd-scripts writes for SDXL."""
    n = unet_config.layers_per_block + 1  # resnets per down block + its downsampler; per up block
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        return f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", module):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        return f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"
    raise UsageError(
        f"UNet module {module!r} has no kohya name this tool knows (only attention-block modules export); "
        f"train with the default --target-modules to export"
    )


def kohya_base_version(version: str) -> str:
    return "sdxl_base_v1-0"


FAMILY = Family(
    name="sdxl",
    title="SDXL",
    pipeline_class="StableDiffusionXLPipeline",
    denoiser="unet",
    text_encoders=("text_encoder", "text_encoder_2"),
    tokenizers=("tokenizer", "tokenizer_2"),
    objective=DDPM,
    recognise=recognise,
    recognise_file=recognise_file,
    versions=("sdxl",),
    version=version,
    native_resolution=native_resolution,
    encode_prompts=encode_prompts,
    denoise=denoise,
    denoiser_targets=UNET_TARGETS,
    mlp_targets=UNET_MLP_TARGETS,
    text_encoder_targets=CLIP_TARGETS,
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    kohya_module=kohya_module,
    kohya_base_version=kohya_base_version,
    adapters_words=("UNet", "UNet + both text encoders"),
    legacy_names=("tiny-sdxl",),
    unread_modules=unread_modules,
    embeddings_elsewhere=True,
    embedding_keys={"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
)


def build_tiny(seed: int = 0):
    """A tiny SDXL-shaped pipeline: two text encoders (the second with a pooled projection), micro-conditioning
    time ids, 64 px. Random weights, seeded; the real SD tokenizer for both encoders."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = load_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids + the pooled text embedding
        cross_attention_dim=64,  # both encoders' hidden states side by side
        norm_num_groups=32,
    )
    vae = tiny_vae(seed + 1)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=tiny_text_encoder(tokenizer, False, seed + 2),
        text_encoder_2=tiny_text_encoder(tokenizer, True, seed + 3),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
