"""The DDPM objective of the UNet families (Ho et al., 2020): noisy = sqrt(a) * x + sqrt(1 - a) * noise at a
discrete timestep, trained to predict epsilon, v (Salimans & Ho, 2022) or the sample, optionally with
min-SNR-gamma weights (Hang et al., 2023)."""

from __future__ import annotations

import enum

import torch

from . import Objective


class PredictionType(str, enum.Enum):
    EPSILON = "epsilon"
    V = "v_prediction"
    SAMPLE = "sample"

    def __str__(self) -> str:
        return self.value


def prediction_type(scheduler) -> PredictionType:
    """What the model predicts, as its scheduler config says (SD 1.x: epsilon, SD 2.x-v: v)."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    try:
        return PredictionType(kind)
    except ValueError:
        raise ValueError(f"unknown prediction_type {kind!r}") from None


def training_scheduler(scheduler_config):
    """The noise schedule the model was trained with, from the pipeline's (any sampler's) scheduler config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config)


def draw_timesteps(scheduler, generators: list, latents: torch.Tensor, settings=None) -> torch.Tensor:
    """One uniform timestep per example, each from its own generator."""
    steps = scheduler.config.num_train_timesteps
    return torch.cat([torch.randint(0, steps, (1,), generator=g, device=latents.device) for g in generators])


def add_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    return scheduler.add_noise(latents, noise, timesteps)


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output, as the model's `prediction_type` says."""
    kind = prediction_type(scheduler)
    if kind is PredictionType.EPSILON:
        return noise
    if kind is PredictionType.V:
        return scheduler.get_velocity(latents, noise, timesteps)
    return latents


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor | None:
    """Min-SNR-gamma weights, one per example, or None when gamma is 0.

    In the units of the model's target: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v, and min(SNR, gamma)
    for the sample itself. A model pretrained with these weights (the world's base) barely learned the
    low-noise steps' exact noise, so fine-tuning it without them spends the LoRA on fitting that noise."""
    if not gamma:
        return None
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    capped = snr.clamp(max=gamma)
    kind = prediction_type(scheduler)
    if kind is PredictionType.EPSILON:
        return capped / snr
    if kind is PredictionType.V:
        return capped / (snr + 1)
    return capped


def weights_of(scheduler, timesteps: torch.Tensor, settings) -> torch.Tensor | None:
    return snr_weights(scheduler, timesteps, settings.snr_gamma)


def prediction_words(scheduler) -> str:
    return prediction_type(scheduler).value


def fast_sampler(pipe):
    """DPM-Solver++ draws good images in ~25 steps from any SD scheduler config."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)


DDPM = Objective(
    "ddpm", training_scheduler, draw_timesteps, add_noise, training_target, weights_of, prediction_words, fast_sampler,
    ("prediction_type", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas",
     "rescale_betas_zero_snr"),
)  # fmt: skip
