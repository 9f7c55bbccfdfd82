"""The DreamBooth loss: instance MSE + lambda * prior-preservation MSE, each example optionally weighted; a loss that
stopped being finite ends training with the likely causes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import TrainingError


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return F.mse_loss(pred, target)
    return (weights * (pred - target).pow(2).mean(dim=tuple(range(1, pred.ndim)))).mean()


def dreambooth_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_class: int,
    prior_loss_weight: float,
    weights: torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
):
    """Instance MSE + lambda * class MSE, each example's MSE times its weight when `weights` are given, each latent
    cell's squared error times its weight when `pixel_weights` (B, 1, h, w) are (--masked-loss).

    The batch holds the instance examples first and `num_class` class examples last
    (0 without prior preservation). Returns (total, instance, prior) losses.
    """
    pred, target = pred.float(), target.float()
    if pixel_weights is not None:
        # still the mean over every cell, as kohya's masked loss takes it: a weight of 0 removes a cell's error
        # without making the subject's cells count for more when the subject is small
        errors = (pixel_weights.float() * (pred - target).pow(2)).mean(dim=tuple(range(1, pred.ndim)))
        errors = errors if weights is None else errors * weights
        n = pred.shape[0] - num_class
        instance = errors[:n].mean()
        prior = errors[n:].mean() if num_class else torch.zeros_like(instance)
        return instance + prior_loss_weight * prior, instance, prior
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
        raise TrainingError(
            f"loss became {value} at step {step}; likely causes: fp16 overflow (try --mixed-precision bf16 "
            f"or no) or a learning rate too high (--learning-rate); the last checkpoint is kept. "
            f"--detect-anomaly shows the operation that made it"
        )
    return value
