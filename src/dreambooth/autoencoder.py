"""The VAE's precision. A VAE whose config asks to be upcast (`force_upcast`: SDXL's own VAE, whose activations
overflow to NaN in fp16) keeps fp32 weights and runs with autocast off, whatever precision the rest of the model
trains or draws in; any other VAE (e.g. an fp16-safe one) runs in that precision like the rest."""

from __future__ import annotations

import contextlib

import torch


def needs_fp32(vae) -> bool:
    return bool(getattr(vae.config, "force_upcast", False))


def weights_dtype(vae, dtype: torch.dtype) -> torch.dtype:
    """The dtype the VAE's weights are kept in when the rest of the model is in `dtype`."""
    return torch.float32 if needs_fp32(vae) else dtype


def full_precision(vae, device_type: str):
    """Autocast off around a VAE that must run in fp32: the caller's autocast would run its convolutions in fp16
    even with fp32 weights. Nothing changes for another VAE, or on a device without autocast (meta)."""
    if needs_fp32(vae) and torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def input_dtype(vae) -> torch.dtype:
    """What the VAE is given: fp32 when it must run in fp32 (autocast may have left the latents in fp16), else its
    weights' dtype."""
    return torch.float32 if needs_fp32(vae) else vae.dtype


def encode(vae, pixels: torch.Tensor):
    """The VAE's posterior (latent distribution) of `pixels` in [-1, 1]."""
    with full_precision(vae, pixels.device.type):
        return vae.encode(pixels.to(input_dtype(vae))).latent_dist


def normalised(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> what the denoiser works on: shifted (FLUX's and SD3's VAEs have a `shift_factor`) and scaled."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor if shift else latents * vae.config.scaling_factor


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Denoised latents -> images in [-1, 1], undoing the scaling (and, where the VAE's config has them, the
    per-channel mean and std) as the diffusers pipelines do before decoding."""
    with full_precision(vae, latents.device.type):
        latents = latents.to(input_dtype(vae))
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            channels = len(mean)
            mean = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        return vae.decode(latents, return_dict=False)[0]


def decode_as_they_are(vae, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's own latents -> images in [-1, 1], in the VAE's precision (for families that undo their own
    normalisation: `Family.decoded_latents`)."""
    with full_precision(vae, latents.device.type):
        return vae.decode(latents.to(input_dtype(vae)), return_dict=False)[0]
