"""The DreamBooth objective: what the UNet should predict, and the prior-preservation loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import TrainingError


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output, as the model's `prediction_type` says (SD 1.x: epsilon, SD 2.x-v: v)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unknown prediction_type {kind!r}")


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor | None:
    """Min-SNR-gamma weights (Hang et al., 2023), one per example, or None when gamma is 0.

    In the units of the model's target: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v, and min(SNR, gamma)
    for the sample itself. A model pretrained with these weights (the world's base) barely learned the
    low-noise steps' exact noise, so fine-tuning it without them spends the LoRA on fitting that noise."""
    if not gamma:
        return None
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    capped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    return capped / snr if kind == "epsilon" else capped / (snr + 1) if kind == "v_prediction" else capped


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return F.mse_loss(pred, target)
    return (weights * (pred - target).pow(2).mean(dim=tuple(range(1, pred.ndim)))).mean()


def dreambooth_loss(pred: torch.Tensor, target: torch.Tensor, num_class: int, prior_loss_weight: float,
                    weights: torch.Tensor | None = None):
    """Instance MSE + lambda * class MSE, each example's MSE times its weight when `weights` are given.

    The batch holds the instance examples first and `num_class` class examples last
    (0 without prior preservation). Returns (total, instance, prior) losses.
    """
    pred, target = pred.float(), target.float()
    if weights is not None:
        n = pred.shape[0] - num_class
        instance = weighted_mse(pred[:n], target[:n], weights[:n])
        prior = weighted_mse(pred[n:], target[n:], weights[n:]) if num_class else torch.zeros_like(instance)
        return instance + prior_loss_weight * prior, instance, prior
    if num_class == 0:
        loss = F.mse_loss(pred, target)
        return loss, loss, torch.zeros_like(loss)
    n = pred.shape[0] - num_class
    instance = F.mse_loss(pred[:n], target[:n])
    prior = F.mse_loss(pred[n:], target[n:])
    return instance + prior_loss_weight * prior, instance, prior


def finite_loss(loss: torch.Tensor, step: int) -> float:
    value = loss.detach().float().item()
    if not math.isfinite(value):
        raise TrainingError(f"loss became {value} at step {step}; likely causes: fp16 overflow (try --mixed-precision bf16 "
                            f"or no) or a learning rate too high (--learning-rate); the last checkpoint is kept. "
                            f"--detect-anomaly shows the operation that made it")
    return value
