"""Pivotal tuning (cloneofsimo's lora_pti; diffusers' --train_text_encoder_ti): new token embeddings and a LoRA. The
tokens train (at --text-encoder-lr) for the first --ti-fraction of the steps, beside the LoRA, then stay fixed while
the LoRA trains on around them."""

from __future__ import annotations

from ..config import TrainConfig
from ..errors import UsageError
from .plan import Plan


def plan(cfg: TrainConfig) -> Plan:
    if not 0 < cfg.ti_fraction <= 1:
        raise UsageError(f"--ti-fraction {cfg.ti_fraction}: must be above 0 and at most 1, e.g. 0.5")
    if cfg.tokens_per_subject < 1:
        raise UsageError(f"--tokens-per-subject {cfg.tokens_per_subject}: must be at least 1, e.g. 2")
    steps = max(1, round(cfg.ti_fraction * cfg.max_steps))
    return Plan(lora=True, token_steps=steps, token_lr=cfg.text_encoder_lr)
