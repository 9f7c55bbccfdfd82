"""What the flow-matching transformer families (FLUX.1, SD3) share: their default LoRA targets, how their native size
is read, and the tiny models' 16-channel autoencoder."""

from __future__ import annotations

# The attention projections of the joint blocks (image and text streams) and of FLUX's single blocks, as diffusers'
# DreamBooth scripts for FLUX.1 and SD3 target them
TRANSFORMER_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
# the joint blocks' feed-forward layers of both streams
TRANSFORMER_MLP_TARGETS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")


def native_resolution(pipe) -> int:
    return pipe.default_sample_size * pipe.vae_scale_factor


def tiny_vae(seed: int, shift_factor: float, scaling_factor: float):
    """64 px <-> 32x32x16 latents, random weights (seeded), with the family's latent shift and scale."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    )
