"""SD3 / SD3.5 (Medium, Large): a rectified-flow MMDiT on 2x2 patches of a 16-channel VAE's latents, conditioned on
the penultimate hidden states of two CLIP encoders (side by side, padded to T5's width) followed by T5's tokens,
and on both CLIPs' pooled embeddings; a fixed shift of the noise levels (3.0 in the released configs)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from ..objectives.flow import FLOW
from . import t5
from .base import Family, PromptEmbeddings, checkpoint_has
from .clip import load_clip_tokenizer, tiny_text_encoder, tokenize
from .mmdit import TRANSFORMER_MLP_TARGETS, TRANSFORMER_TARGETS, native_resolution, tiny_vae
from .unet import CLIP_TARGETS


def recognise(pipe) -> bool:
    transformer = getattr(pipe, "transformer", None)
    return transformer is not None and type(transformer).__name__ == "SD3Transformer2DModel"


def recognise_file(path: Path) -> bool:
    """Stability's single files name the MMDiT's `joint_blocks`."""
    return checkpoint_has(path, "model.diffusion_model.joint_blocks.")


def version(pipe) -> str:
    """SD3.5 Large has 38 blocks; SD3.5 Medium 24 with dual attention in its first ones (MMDiT-X); SD3 Medium 24."""
    config = pipe.transformer.config
    if config.num_layers == 38:
        return "sd3.5-large"
    if config.num_layers == 24:
        return "sd3.5-medium" if config.get("dual_attention_layers") else "sd3-medium"
    return ""


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str], device) -> PromptEmbeddings:
    """As StableDiffusion3Pipeline computes them: both CLIPs' penultimate hidden states side by side ("clip") and their
    pooled embeddings side by side ("pooled"), T5's token embeddings ("t5"). An encoder given as None is not asked
    (its part comes from a cache)."""
    out: PromptEmbeddings = {}
    clip_l, clip_g, t5_encoder = encoders
    if clip_l is not None and clip_g is not None:
        hidden, pooled = [], []
        for tokenizer, encoder in zip(tokenizers[:2], (clip_l, clip_g)):
            result = encoder(tokenize(tokenizer, prompts, device), output_hidden_states=True)
            pooled.append(result[0])  # CLIPTextModelWithProjection: the projected pooled embedding first
            hidden.append(result.hidden_states[-2])
        out["clip"], out["pooled"] = torch.cat(hidden, dim=-1), torch.cat(pooled, dim=-1)
    if t5_encoder is not None:
        out["t5"] = t5_encoder(tokenize(tokenizers[2], prompts, device))[0]
    return out


def denoise(
    transformer, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: PromptEmbeddings, geometry: torch.Tensor
) -> torch.Tensor:
    """The velocity for `noisy` at `timesteps` (0-1000)."""
    return transformer(
        hidden_states=noisy, timestep=timesteps, encoder_hidden_states=joint_tokens(prompts),
        pooled_projections=prompts["pooled"], return_dict=False,
    )[0]  # fmt: skip


def joint_tokens(prompts: PromptEmbeddings) -> torch.Tensor:
    """The text sequence the MMDiT reads: the CLIP tokens, padded to T5's width, then T5's tokens."""
    clip, tokens = prompts["clip"], prompts["t5"]
    return torch.cat([torch.nn.functional.pad(clip, (0, tokens.shape[-1] - clip.shape[-1])), tokens], dim=-2)


def unread_modules(component: str, model) -> str | None:
    """The last block's text stream ends there (`context_pre_only`): its query projection feeds nothing."""
    if component != "transformer":
        return None
    return rf"transformer_blocks\.{model.config.num_layers - 1}\.attn\.add_q_proj"


def kohya_module(module: str, config) -> str:
    raise UsageError("--export kohya: not written for SD3 yet; use the diffusers file (pytorch_lora_weights.safetensors)")


def kohya_base_version(version: str) -> str:
    return "sd3"


FAMILY = Family(
    name="sd3",
    title="SD3",
    pipeline_class="StableDiffusion3Pipeline",
    denoiser="transformer",
    text_encoders=("text_encoder", "text_encoder_2", "text_encoder_3"),
    tokenizers=("tokenizer", "tokenizer_2", "tokenizer_3"),
    objective=FLOW,
    recognise=recognise,
    recognise_file=recognise_file,
    versions=("sd3-medium", "sd3.5-medium", "sd3.5-large"),
    version=version,
    native_resolution=native_resolution,
    encode_prompts=encode_prompts,
    denoise=denoise,
    denoiser_targets=TRANSFORMER_TARGETS,
    mlp_targets=TRANSFORMER_MLP_TARGETS,
    text_encoder_targets=CLIP_TARGETS,
    kohya_prefixes={},
    kohya_module=kohya_module,
    kohya_base_version=kohya_base_version,
    adapters_words=("transformer", "transformer + both CLIP text encoders"),
    unread_modules=unread_modules,
    frozen_text_encoders=("text_encoder_3",),
    long_tokenizers=("tokenizer_3",),
    resolution_multiple=16,  # 8x VAE, then 2x2 patches
    embedding_keys={"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5"},
)


def build_tiny(seed: int = 0):
    """A tiny SD3.5 Medium-shaped pipeline: two MMDiT blocks (the first with dual attention, as MMDiT-X), two CLIP
    encoders with pooled projections and a T5 (64 wide, so both CLIPs' 32-wide states side by side fit its width),
    a 16-channel VAE (64 px <-> 32x32x16 latents, 256 tokens of 2x2 patches). Random weights, seeded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip_tokenizer = load_clip_tokenizer()
    t5_tokenizer = t5.tiny_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # T5's width
        caption_projection_dim=32,
        pooled_projection_dim=64,  # both CLIPs' pooled embeddings side by side
        pos_embed_max_size=32,
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed + 1, shift_factor=0.0609, scaling_factor=1.5305),  # SD3's own VAE's
        text_encoder=tiny_text_encoder(clip_tokenizer, True, seed + 2),
        tokenizer=clip_tokenizer,
        text_encoder_2=tiny_text_encoder(clip_tokenizer, True, seed + 3),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=t5.tiny_encoder(t5_tokenizer, 64, seed + 4),
        tokenizer_3=t5_tokenizer,
    )
