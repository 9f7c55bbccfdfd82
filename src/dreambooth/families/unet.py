"""What the UNet families (SD 1.x/2.x, SDXL) share: the denoiser's native size and default LoRA targets."""

from __future__ import annotations

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections, as the DreamBooth-LoRA scripts use
CLIP_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
