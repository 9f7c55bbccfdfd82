"""One training step's loss: noise the latents at random timesteps, ask the denoiser, compare with the family's
target (and, for base-prediction prior preservation, with the frozen base model's own prediction)."""

from __future__ import annotations

import torch

from ..config import PriorMode, TrainConfig
from ..families import Family
from ..lora.adapter import adapters_off
from .batches import Examples
from .loss import dreambooth_loss


def step_loss(cfg: TrainConfig, family: Family, denoiser, noise_scheduler, examples: Examples, micro_step: int):
    """Loss of one micro-batch: noise the latents at random timesteps, predict, compare with the target.
    Returns (total, instance, prior) losses."""
    objective = family.objective
    batch = examples.batch(micro_step)
    latents = batch.latents
    shape, device = (1, *latents.shape[1:]), latents.device
    noise = torch.cat([torch.randn(shape, generator=g, device=device) for g in batch.rngs]).to(latents.dtype)
    timesteps = objective.timesteps(noise_scheduler, batch.rngs, latents, cfg)
    noisy = objective.noise(noise_scheduler, latents, noise, timesteps)
    prompts = examples.encode(batch.prompts)
    torch.manual_seed(cfg.seed * 1_000_003 + micro_step)  # LoRA dropout draws from the global generator
    pred = family.denoise(denoiser, noisy, timesteps, prompts, batch.geometry)
    target = objective.target(noise_scheduler, latents, noise, timesteps)
    if cfg.prior() is PriorMode.BASE_PREDICTION:
        n = batch.num_class
        base = base_prediction(
            family, denoiser, examples.base_encode(batch.prompts[-n:]), noisy[-n:], timesteps[-n:], batch.geometry[-n:]
        )
        target = torch.cat([target[:-n], base])
    elif cfg.preserve_unconditional:
        # class examples whose prompt was dropped keep the base model's unconditional prediction
        empty = [i for i in range(len(batch.prompts) - batch.num_class, len(batch.prompts)) if batch.prompts[i] == ""]
        if empty:
            base = base_prediction(
                family, denoiser, examples.base_encode([""] * len(empty)), noisy[empty], timesteps[empty], batch.geometry[empty]
            )
            target = target.clone()
            target[empty] = base.to(target.dtype)
    weights = objective.weights(noise_scheduler, timesteps, cfg)
    pixel_weights = None
    if batch.masks is not None:  # subject cells weigh 1, background cells --mask-background-weight
        background = cfg.mask_background_weight
        pixel_weights = background + (1 - background) * batch.masks
    return dreambooth_loss(pred, target, batch.num_class, cfg.prior_loss_weight, weights, pixel_weights)


def base_prediction(family: Family, denoiser, prompts, noisy: torch.Tensor, timesteps: torch.Tensor, geometry: torch.Tensor):
    """The frozen base model's output for the class half of the batch: what prior preservation keeps."""
    base = unwrap(denoiser)  # no DistributedDataParallel hooks for a forward that never goes backward
    with torch.no_grad(), adapters_off(base):
        return family.denoise(base, noisy, timesteps, prompts, geometry)


def unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module
