"""The plain training loop the world's small models share (the autoencoder and the reader), and their input."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..training import photos as data


def to_tensor(images) -> torch.Tensor:
    """uint8 (n, h, w, 3) or PIL images -> float (n, 3, h, w) in [-1, 1]."""
    if not isinstance(images, np.ndarray):
        images = [im.convert("RGB").resize((32, 32)) for im in images]
    return torch.stack([data.to_tensor(im) for im in images])


def cosine(optimizer, warmup: int, total: int):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup, total)


def progress(stage: str, step: int, total: int, loss: float, started: float, first: int) -> None:
    rate = (step - first) / max(time.time() - started, 1e-6)
    left = (total - step) / rate / 60 if rate > 0 else float("nan")
    print(f"{stage} {step}/{total}  loss {loss:.4f}  {rate:.2f} steps/s  ~{left:.1f} min left", flush=True)


def fit(stage: str, model: torch.nn.Module, steps: int, lr: float, loss_at) -> None:
    """AdamW with 100 warm-up steps and cosine decay; `loss_at(step)` gives each step's loss; progress every 100."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = cosine(optimizer, 100, steps)
    started, total = time.time(), 0.0
    for step in range(1, steps + 1):
        loss = loss_at(step)
        loss.backward()
        optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
        total += loss.item()
        if step % 100 == 0:
            progress(stage, step, steps, total / 100, started, 0)
            total = 0.0
