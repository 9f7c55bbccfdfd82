"""What the UNet families (SD 1.x/2.x, SDXL) share: the denoiser's native size and default LoRA targets."""

from __future__ import annotations

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections, as the DreamBooth-LoRA scripts use
CLIP_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_MLP_TARGETS = ("ff.net.0.proj", "ff.net.2")  # each transformer block's feed-forward (GEGLU in, out)


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def tiny_vae(seed: int):
    """The tiny models' autoencoder: 64 px <-> 32x32x4 latents, random weights (seeded)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
