"""Qwen-Image: a rectified-flow MMDiT (double-stream blocks only: image and text streams in joint attention) on 2x2
patches of a 16-channel video VAE's latents (Wan-style, one frame per image, normalised by per-channel means and
deviations), conditioned on the last hidden states of Qwen2.5-VL (its text path only) read through a chat prompt
template whose system part is dropped. Guidance is true classifier-free guidance (`true_cfg_scale`)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..objectives.flow import FLOW
from . import qwen
from .base import Family, PromptEmbeddings, checkpoint_has
from .mmdit import TRANSFORMER_TARGETS, native_resolution

# QwenImagePipeline's prompt template (set in its __init__, so not readable from the class) and how many of its
# leading tokens the pipeline drops: the system line and the user turn's opening, 34 tokens with Qwen2.5's tokenizer
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATE_TOKENS = 34
TOKENIZER_MAX_LENGTH = 1024  # the pipeline's longest prompt, in tokens after the dropped ones

# the blocks' feed-forward layers of both streams
MLP_TARGETS = ("img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")


def recognise(pipe) -> bool:
    transformer = getattr(pipe, "transformer", None)
    return transformer is not None and type(transformer).__name__ == "QwenImageTransformer2DModel"


def recognise_file(path: Path) -> bool:
    """diffusers has no single-file loader for the Qwen-Image pipeline: a file holding its transformer (the blocks'
    `img_mod`, under ComfyUI's `model.diffusion_model.` or bare) is named as Qwen-Image, so that loading it fails
    with the family's name rather than as an SD checkpoint."""
    return any(
        checkpoint_has(path, prefix)
        for prefix in ("transformer_blocks.0.img_mod.", "model.diffusion_model.transformer_blocks.0.img_mod.")
    )


def version(pipe) -> str:
    """Qwen-Image (and its 2512 update, the same shapes) has 60 blocks of 24 heads of 128."""
    config = pipe.transformer.config
    return "qwen-image" if (config.num_layers, config.num_attention_heads) == (60, 24) else ""


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str], device) -> PromptEmbeddings:
    """As QwenImagePipeline computes them: Qwen2.5-VL's last hidden states of the templated prompt without the
    template's first TEMPLATE_TOKENS tokens ("hidden"), then zeros to the tokenizer's `model_max_length`
    (--max-sequence-length, which also truncates as the pipeline's `max_sequence_length` does), and which of those
    rows are tokens ("mask"). A fixed length lets each prompt's embedding be cached alone."""
    (encoder,) = encoders
    if encoder is None:
        return {}
    tokenizer = tokenizers[0]
    length = tokenizer.model_max_length
    tokens = tokenizer(
        [PROMPT_TEMPLATE.format(p) for p in prompts],
        max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_TOKENS,
        padding=True,
        truncation=True,
        return_tensors="pt",
    ).to(device)
    hidden = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True)
    last = hidden.hidden_states[-1]
    out = last.new_zeros(len(prompts), length, last.shape[-1])
    mask = torch.zeros(len(prompts), length, dtype=torch.long, device=last.device)
    for i, (states, valid) in enumerate(zip(last, tokens.attention_mask.bool())):
        kept = states[valid][TEMPLATE_TOKENS:][:length]
        out[i, : len(kept)], mask[i, : len(kept)] = kept, 1
    return {"hidden": out, "mask": mask}


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2x2 latent patch one token."""
    from diffusers import QwenImagePipeline

    b, c, h, w = latents.shape
    return QwenImagePipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of `height` x `width` (the pipeline's unpacking adds a frame axis)."""
    from diffusers import QwenImagePipeline

    return QwenImagePipeline._unpack_latents(tokens, height, width, 1)[:, :, 0]


def denoise(
    transformer, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: PromptEmbeddings, geometry: torch.Tensor
) -> torch.Tensor:
    """The velocity for `noisy` (B, C, H, W) at `timesteps` (0-1000); padding rows of the prompts are masked out."""
    b, _, h, w = noisy.shape
    out = transformer(
        hidden_states=pack(noisy),
        timestep=timesteps / 1000,  # the transformer scales time by 1000 itself
        encoder_hidden_states=prompts["hidden"],
        encoder_hidden_states_mask=prompts["mask"],
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def sampled_latents(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """QwenImagePipeline returns packed latents with output_type="latent"."""
    scale = pipe.vae_scale_factor
    return unpack(latents, height // scale, width // scale)


def latent_statistics(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latent mean and deviation, shaped to broadcast over (B, C, H, W) latents."""
    channels = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(1, channels, 1, 1).to(like.device, like.dtype)
    return mean, std


def encode_images(vae, pixels: torch.Tensor):
    """The video VAE's posterior of `pixels` (B, 3, H, W) in [-1, 1] as one-frame videos, without the frame axis."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posterior = vae.encode(pixels.to(vae.dtype)[:, :, None]).latent_dist
    return DiagonalGaussianDistribution(posterior.parameters[:, :, 0])


def normalised_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    mean, std = latent_statistics(vae, latents)
    return (latents - mean) / std


def decoded_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Denoised latents -> images in [-1, 1], as QwenImagePipeline decodes them (one frame)."""
    latents = latents.to(vae.dtype)
    mean, std = latent_statistics(vae, latents)
    return vae.decode((latents * std + mean)[:, :, None], return_dict=False)[0][:, :, 0]


def guidance_options(guidance: float, negative_prompts: list[str] | None, count: int) -> dict:
    """Qwen-Image is not guidance-distilled: classifier-free guidance is `true_cfg_scale`, and it runs only with a
    negative prompt, which the pipeline's own examples leave blank (" ")."""
    if guidance <= 1:
        return {"true_cfg_scale": 1.0}
    return {"true_cfg_scale": guidance, "negative_prompt": negative_prompts or [" "] * count}


def unread_modules(component: str, model) -> str | None:
    """The last block's text stream ends there (only the image stream reaches the output): its text query, its
    attention output and its feed-forward layers feed nothing."""
    if component != "transformer":
        return None
    last = model.config.num_layers - 1
    return rf"transformer_blocks\.{last}\.(attn\.(add_q_proj|to_add_out)|txt_mlp\..+)"


# the layers outside the blocks that diffusers' reader of kohya-layout Qwen-Image files names back
OUTER_LAYERS = ("img_in", "txt_in", "proj_out", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1",
                "time_text_embed.timestep_embedder.linear_2")  # fmt: skip


def kohya_module(module: str, config) -> str:
    """The kohya layout's Qwen-Image LoRAs (musubi-tuner's) keep diffusers' module paths, which are also the original
    model's (ComfyUI's `diffusion_model.*`), under `lora_unet_`; diffusers' reader of them knows the blocks' names
    and OUTER_LAYERS."""
    if not (module in OUTER_LAYERS or re.fullmatch(r"transformer_blocks\.\d+\..+", module)):
        from ..errors import UsageError

        raise UsageError(
            f"transformer module {module!r} has no kohya name this tool writes; train with --target-modules "
            f"attention, attention-mlp or names of the blocks' layers to export, or pass --export none"
        )
    return module


def kohya_base_version(version: str) -> str:
    return "qwen_image"


FAMILY = Family(
    name="qwen-image",
    title="Qwen-Image",
    pipeline_class="QwenImagePipeline",
    denoiser="transformer",
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    objective=FLOW,
    recognise=recognise,
    recognise_file=recognise_file,
    versions=("qwen-image",),
    version=version,
    native_resolution=native_resolution,
    encode_prompts=encode_prompts,
    denoise=denoise,
    denoiser_targets=TRANSFORMER_TARGETS,
    mlp_targets=MLP_TARGETS,
    text_encoder_targets=(),
    kohya_prefixes={"transformer": "lora_unet_"},
    kohya_module=kohya_module,
    kohya_network_module="networks.lora_qwen_image",  # musubi-tuner's, which trains Qwen-Image LoRAs for sd-scripts
    kohya_base_version=kohya_base_version,
    adapters_words=("transformer", "transformer"),
    unread_modules=unread_modules,
    frozen_text_encoders=("text_encoder",),  # Qwen2.5-VL 7B: diffusers' loader reads transformer LoRAs alone
    long_tokenizers=("tokenizer",),
    resolution_multiple=16,  # 8x VAE, then 2x2 patches
    sampled_latents=sampled_latents,
    encode_images=encode_images,
    normalised_latents=normalised_latents,
    decoded_latents=decoded_latents,
    guidance_options=guidance_options,
    embedding_keys={"text_encoder": "qwen2_5_vl"},
)


def tiny_text_encoder(tokenizer, seed: int):
    """A 2-layer, 32-wide Qwen2.5-VL (with a one-block vision tower the family never runs), random weights (seeded);
    its rotary sections split the 8-wide heads as the real model's [16, 24, 24] split 128."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e6},
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, fullatt_block_indexes=[0]
        ),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def tiny_tokenizer():
    """The tiny Qwen-style tokenizer with "system" and "Describe" as whole words, as Qwen2.5's vocabulary has them:
    the pipeline's template then opens with its 34 tokens, and dropping them leaves the prompt whole."""
    tokenizer = qwen.tiny_tokenizer()
    tokenizer.add_tokens(["system", "Describe"])
    return tokenizer


def build_tiny(seed: int = 0):
    """A tiny Qwen-Image-shaped pipeline: two double-stream blocks (2 heads of 16), a 2-layer Qwen2.5-VL text
    encoder, a one-level video VAE (64 px <-> 32x32x16 latents, 256 image tokens of 2x2 patches) with Qwen-Image's
    latent statistics. Random weights, seeded; the Qwen-style tokenizer built in code."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,  # 16 latent channels x a 2x2 patch
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # the text encoder's width
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(base_dim=16, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False])
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's own
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )  # fmt: skip
    pipe = QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=tiny_text_encoder(tokenizer, seed + 2),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = 32  # type: ignore[attr-defined]  # 64 px at the tiny VAE's 2x
    return pipe
