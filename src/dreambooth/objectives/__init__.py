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
    timesteps: Callable[[Any, list[torch.Generator], Any], torch.Tensor]  # (scheduler, per-example generators, device)
    noise: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (scheduler, latents, noise, t)
    target: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (scheduler, latents, noise, t)
    weights: Callable[[Any, torch.Tensor, float], torch.Tensor | None]  # (scheduler, t, snr_gamma): per-example weights
    prediction: Callable[[Any], str]  # (scheduler) -> what the denoiser outputs, in words for logs and cards
