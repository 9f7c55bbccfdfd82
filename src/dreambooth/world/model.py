"""The world's base model: an SD-1.x-shaped pipeline small enough to train from scratch on a CPU.

32 px images; a one-level autoencoder (32 px -> 16x16x8 latents, near lossless on renders); a 3-level UNet at
16x16; a 4-layer CLIP text encoder with the real SD 1.x vocabulary and prompts of at most 20 tokens; v-prediction
on a cosine schedule, which lets fast deterministic solvers start from pure noise.
"""

from __future__ import annotations

import torch

MAX_TOKENS = 20
LATENT_CHANNELS = 8


def build_autoencoder(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=32,
        mid_block_add_attention=False,
    )


def build_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(48, 96, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=32,
        norm_num_groups=16,
    )


def build_text_encoder(tokenizer, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False
    )


def build_tokenizer():
    from ..families.clip import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def assemble(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
