"""Training objectives of the base families: how a clean latent is noised, what the denoiser is trained to
output, how timesteps are drawn and how each example's loss is weighted. Small named functions of the maths,
bundled per objective so a family names the one it was trained with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Objective:
    name: str
    scheduler: Callable[[Any], Any]  # the pipeline's scheduler config -> the training noise scheduler
    # (scheduler, per-example generators, latents, settings): one timestep per example; `settings` is the run's
    # TrainConfig (an objective reads its own fields of it: snr_gamma, weighting_scheme, ...)
    timesteps: Callable[[Any, list, torch.Tensor, Any], torch.Tensor]
    noise: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (scheduler, latents, noise, t)
    target: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (scheduler, latents, noise, t)
    weights: Callable[[Any, torch.Tensor, Any], torch.Tensor | None]  # (scheduler, t, settings): per-example weights
    prediction: Callable[[Any], str]  # (scheduler) -> what the denoiser outputs, in words for logs and cards
    sampler: Callable[[Any], Any]  # (pipeline) -> the scheduler images are drawn with
    # the training scheduler's config keys that decide what a step computes (prediction type, noise schedule, shift)
    defining_keys: tuple[str, ...] = ()


def identity(objective: Objective, scheduler) -> str:
    """What a training step computes, as the training scheduler's config defines it for `objective`, in words:
    'ddpm: prediction_type=v_prediction; num_train_timesteps=1000; ...'. A run continued on a base whose identity
    differs would train toward another target."""
    config = scheduler.config
    return f"{objective.name}: " + "; ".join(f"{key}={config.get(key)}" for key in objective.defining_keys)
