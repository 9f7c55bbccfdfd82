"""DreamBooth (Ruiz et al. 2022) with LoRA: a rare-token identifier already in the vocabulary, and a LoRA on the
denoiser (and on the text encoders with --train-text-encoder) that binds the subject to it."""

from __future__ import annotations

from ..config import TrainConfig
from ..errors import UsageError
from .plan import Plan

TOKEN_OPTIONS = ("initializer_word", "t5_tokens")


def plan(cfg: TrainConfig) -> Plan:
    given = [name for name in TOKEN_OPTIONS if getattr(cfg, name)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(
            f"{flag}: new tokens are made by --method textual-inversion or pivotal, not dreambooth; add --method "
            f"pivotal or drop {flag}"
        )
    return Plan(lora=True)
