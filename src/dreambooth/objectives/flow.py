"""The rectified-flow objective of the transformer families (FLUX.1, SD3; Esser et al., 2024): noisy = (1 - s) * x +
s * noise at a noise level s in (0, 1], trained to predict the velocity noise - x. The level is drawn from a density
(`--weighting-scheme`: logit-normal, mode, or uniform) and shifted toward noise as the model's scheduler config says;
the loss may be weighted per example (sigma_sqrt, cosmap). diffusers' training utilities supply the density and
the weights; what is written here draws them from each example's own generator and applies the shift."""

from __future__ import annotations

import math

import torch

from . import Objective

SCHEMES = ("logit_normal", "mode", "cosmap", "sigma_sqrt", "none")


def training_scheduler(scheduler_config):
    """The flow-matching schedule the model samples with (its shift and dynamic-shift settings)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)


def shifted(scheduler, sigmas: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Noise levels moved toward noise as the model samples them: by the config's fixed `shift` (SD3: 3), or, with
    `use_dynamic_shifting` (FLUX.1), by a shift that grows with the image's token count, the same the pipeline uses
    at this resolution, so training sees the noise levels generation will ask for."""
    config = scheduler.config
    if config.get("use_dynamic_shifting"):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        tokens = latents.shape[-2] * latents.shape[-1] // 4  # the transformer's tokens: 2x2 latent patches
        mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift)
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    shift = config.get("shift", 1.0)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def draw_timesteps(scheduler, generators: list, latents: torch.Tensor, settings) -> torch.Tensor:
    """One noise level per example from its own generator, by `settings.weighting_scheme`, shifted; as timesteps
    (level x num_train_timesteps, what the transformers are given)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = torch.cat(
        [
            compute_density_for_timestep_sampling(
                settings.weighting_scheme,
                1,
                settings.logit_mean,
                settings.logit_std,
                settings.mode_scale,
                device=latents.device,
                generator=g,
            )  # fmt: skip
            for g in generators
        ]
    )
    # u in [0, 1): keep the level above 0, where the velocity target is still defined by noise
    sigmas = shifted(scheduler, u.clamp(min=1e-3), latents)
    return sigmas * scheduler.config.num_train_timesteps


def noise_level(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigmas = timesteps.float() / scheduler.config.num_train_timesteps
    return sigmas.view(-1, *[1] * (like.ndim - 1)).to(like.dtype)


def add_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    s = noise_level(scheduler, timesteps, latents)
    return (1 - s) * latents + s * noise


def velocity(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    return noise - latents


def loss_weights(scheduler, timesteps: torch.Tensor, settings) -> torch.Tensor | None:
    """Per-example weights of `settings.weighting_scheme` (sigma_sqrt: 1 / s^2; cosmap: 2 / (pi (1 - 2s + 2s^2))),
    None for the schemes that weight by the density alone."""
    if settings.weighting_scheme not in ("sigma_sqrt", "cosmap"):
        return None
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    sigmas = timesteps.float() / scheduler.config.num_train_timesteps
    return compute_loss_weighting_for_sd3(settings.weighting_scheme, sigmas)


def own_sampler(pipe):
    """Flow models draw with the scheduler they came with (flow-matching Euler), which knows their shift."""
    return pipe.scheduler


def prediction_words(scheduler) -> str:
    return "flow (velocity)"


FLOW = Objective(
    "flow", training_scheduler, draw_timesteps, add_noise, velocity, loss_weights, prediction_words, own_sampler,
    ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
     "max_image_seq_len"),
)  # fmt: skip
